"""The data layer shared by similarity and reconstruction: datasets as uint8 tensors and safe image files."""

from .datasets import BUILTIN, canonical_name, data_folder, load_dataset, load_sample
from .types import ImageSet

__all__ = ["BUILTIN", "ImageSet", "canonical_name", "data_folder", "load_dataset", "load_sample"]
