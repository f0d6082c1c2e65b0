"""Similarity (B2): Siamese embeddings trained with contrastive losses, evaluation, index and search."""

from .api import SimilarityModel
from .index import Index, build_index, search

__all__ = ["Index", "SimilarityModel", "build_index", "search"]
