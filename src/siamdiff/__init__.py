"""siamdiff: learned image similarity (Siamese networks) and reconstruction of noisy images, on small images.

>>> from siamdiff import SimilarityModel
>>> model = SimilarityModel.load("mnist")
>>> model.score("seven_a.png", "seven_b.png")["probability"]
>>> from siamdiff import Denoiser
>>> clean, info = Denoiser.load("mnist").denoise(noisy)   # noisy: (N, 1, 28, 28) in [0, 1]; sigma estimated
"""

__version__ = "0.1.0"

from .checkpoint import load_model, save_model  # noqa: E402
from .data import ImageSet, load_dataset  # noqa: E402
from .errors import SiamdiffError  # noqa: E402
from .similarity import Index, SimilarityModel, build_index, search  # noqa: E402
from .reconstruction.api import Denoiser  # noqa: E402

__all__ = ["Denoiser", "ImageSet", "Index", "SiamdiffError", "SimilarityModel", "__version__", "build_index",
           "load_dataset", "load_model", "save_model", "search"]
