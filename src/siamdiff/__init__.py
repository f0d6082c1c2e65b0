"""siamdiff: learned image similarity (Siamese networks) and reconstruction of noisy images, on small images.

>>> from siamdiff import SimilarityModel
>>> model = SimilarityModel.load("mnist")
>>> model.score("seven_a.png", "seven_b.png")["probability"]
>>> from siamdiff import Denoiser
>>> clean, info = Denoiser.load("mnist").denoise(noisy)   # noisy: (N, 1, 28, 28) in [0, 1]; sigma estimated
"""

from .core.checkpoint import load_model, save_model
from .core.errors import SiamdiffError
from .core.version import __version__
from .data import ImageSet, load_dataset
from .reconstruction.pipeline import Denoiser
from .similarity import Index, SimilarityModel, build_index, search

__all__ = ["Denoiser", "ImageSet", "Index", "SiamdiffError", "SimilarityModel", "__version__", "build_index",
           "load_dataset", "load_model", "save_model", "search"]
