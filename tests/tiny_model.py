"""Tiny things for tests: a packaged art2mus model of untrained parts (registry and serving tests), and a
project small enough that the train stage's upstream runs in a minute or two (training-stage tests), and
a synthetic track of notes (the prior's crops and training)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from art2mus.config import AudioParams, BackboneParams, EncoderSpec
from art2mus.models.aligner import ImageAligner
from art2mus.models.encoders import ClapAudioEmbedder, build_tiny_image_encoder, seeded_build
from art2mus.models.pipeline import save_model
from art2mus.models.tiny import build_tiny_backbone, save_tiny_backbone

# The modules whose tests copy `tiny_upstream` (tests/model/conftest.py) share this xdist group: one worker builds it, once.
TINY_UPSTREAM_GROUP = "tiny_upstream"

# The train stage's upstream on a tiny project, then a few tiny training steps (threads=1: test workers share
# the machine's cores). Tests set `train.processes`.
TINY_PROJECT: dict[str, dict[str, Any]] = {
    "sample": {"n_artworks": 48, "n_extra_tracks": 0, "n_artists": 8, "image_size": 32},
    "ingest": {"workers": 1},
    "validate_splits": {"min_pairs_per_split": {"train": 8, "val": 1, "test": 1}},
    "prior": {"steps": 4, "batch_size": 8, "threads": 1},
    "train": {"steps": 12, "batch_size": 8, "hidden_dim": 64, "checkpoint_every": 4, "keep_checkpoints": 2,
              "threads": 1, "processes": 1},
}


def build_tiny_model(root: Path, info: dict[str, Any] | None = None) -> Path:
    """`root/art2mus`: tiny prior + tiny encoder spec + fresh aligner, as the train stage packages it."""
    backbone = build_tiny_backbone(BackboneParams(), AudioParams(), seed=0)
    save_tiny_backbone(backbone, root / "prior")
    encoder = build_tiny_image_encoder()
    aligner = ImageAligner(image_dim=encoder.dim, lm_width=backbone.lm_width, tokens=4, hidden_dim=32)
    save_model(root / "art2mus", aligner, root / "prior", EncoderSpec(name="tiny"), info or {"note": "test"})
    return root / "art2mus"


def tiny_clap() -> ClapAudioEmbedder:
    """CLAP's real classes at a tiny size, seeded (2 s window, 32-d), as the CLAP embedder holds it."""
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    config = ClapConfig(
        text_config={"vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "intermediate_size": 64, "max_position_embeddings": 40, "projection_dim": 32},
        audio_config={"spec_size": 128, "num_mel_bins": 64, "window_size": 4, "depths": [1, 1],
                      "num_attention_heads": [2, 2], "patch_embeds_hidden_size": 16, "hidden_size": 32,
                      "projection_dim": 32, "num_hidden_layers": 2},
        projection_dim=32,
    )
    extractor = ClapFeatureExtractor(feature_size=64, sampling_rate=16000, hop_length=320, max_length_s=2,
                                     fft_window_size=512, frequency_max=8000)
    return ClapAudioEmbedder(seeded_build(lambda: ClapModel(config)).eval(), extractor, "in-memory")


def note_track(seconds: float, seed: int, offset: float = 0.0, sample_rate: int = 16000) -> np.ndarray:
    """Decaying tones at random times and pitches, louder towards the end (so crops differ in peak), plus
    a DC offset (so they differ in mean)."""
    rng = np.random.default_rng(seed)
    n = round(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    wave = np.zeros(n)
    for onset in np.sort(rng.uniform(0, seconds, 12)):
        tail = t >= onset
        wave[tail] += np.sin(2 * np.pi * rng.uniform(110, 1760) * t[tail]) * np.exp(-6 * (t[tail] - onset))
    return (wave * np.linspace(0.3, 1.0, n) + offset).astype(np.float32)
