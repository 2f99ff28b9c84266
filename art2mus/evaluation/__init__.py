"""Evaluation: correspondence and retrieval, FAD, ImageBindScore, KL and planted factors, over sets with CIs."""
