"""Frozen image and audio embeddings of every artwork and track, cached by content hash."""

from art2mus.features.embeddings import EMBEDDING_FILES, Embeddings, compute_features, load_embeddings

__all__ = ["EMBEDDING_FILES", "Embeddings", "compute_features", "load_embeddings"]
