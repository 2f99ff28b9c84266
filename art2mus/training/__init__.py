"""Training: the tiny prior and the image aligner."""
