"""A packaged art2mus model of tiny, untrained parts, built in seconds (registry and serving tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from art2mus.config import AudioParams, BackboneParams, EncoderSpec
from art2mus.models.aligner import ImageAligner
from art2mus.models.tiny import build_tiny_backbone, save_tiny_backbone
from art2mus.models.encoders import build_tiny_image_encoder
from art2mus.models.pipeline import save_model


def build_tiny_model(root: Path, info: dict[str, Any] | None = None) -> Path:
    """`root/art2mus`: tiny prior + tiny encoder spec + fresh aligner, as the train stage packages it."""
    backbone = build_tiny_backbone(BackboneParams(), AudioParams(), seed=0)
    save_tiny_backbone(backbone, root / "prior")
    encoder = build_tiny_image_encoder()
    aligner = ImageAligner(image_dim=encoder.dim, lm_width=backbone.lm_width, tokens=4, hidden_dim=32)
    save_model(root / "art2mus", aligner, root / "prior", EncoderSpec(name="tiny"), info or {"note": "test"})
    return root / "art2mus"
