"""Data: the sources, ingestion, pairing, splits, latents and the sample data set."""
