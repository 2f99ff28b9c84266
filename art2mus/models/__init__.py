"""Model components: encoders, the aligner, the AudioLDM2 backbone, audio front-end and pipeline."""
