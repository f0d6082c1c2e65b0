"""The data layer shared by similarity and reconstruction: datasets as uint8 tensors and safe image files."""

from .datasets import BUILTIN, ImageSet, canonical_name, data_dir, load_dataset, load_sample

__all__ = ["BUILTIN", "ImageSet", "canonical_name", "data_dir", "load_dataset", "load_sample"]
