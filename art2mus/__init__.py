"""art2mus: paintings to music with a frozen AudioLDM2 prior and a trained image aligner."""

__version__ = "0.1.0"
