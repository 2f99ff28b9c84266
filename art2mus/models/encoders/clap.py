"""CLAP audio embedder (`clap` kind): `ClapModel.get_audio_features` + `ClapFeatureExtractor`.

Weights come from a hub id (default laion/clap-htsat-unfused) or a local directory written by
`save_pretrained`. transformers 5's `get_audio_features` is unit-norm. The extractor's random crop
and random fusion pick are replaced by deterministic ones, so the same clip always embeds the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from art2mus.config import EncoderSpec
from art2mus.models.encoders.base import DEFAULT_SOURCES, load_hf_with_preprocessor, resample, resolve_device


class ClapAudioEmbedder:
    """`ClapModel.get_audio_features` on `ClapFeatureExtractor` mels, deterministic crops."""

    shared_space: str | None = None

    def __init__(self, model: Any, feature_extractor: Any, encoder_id: str, device: str = "cpu") -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.feature_extractor = feature_extractor
        self.encoder_id = encoder_id
        self.sample_rate = int(feature_extractor.sampling_rate)
        self.dim = int(model.config.projection_dim)
        self.fusion = bool(getattr(model.config.audio_config, "enable_fusion", False))

    @torch.inference_mode()
    def embed_audio(self, waveforms: list[np.ndarray], sample_rate: int) -> torch.Tensor:
        if not waveforms:
            return torch.empty(0, self.dim)
        limit = int(self.feature_extractor.nb_max_samples)
        # Clips longer than the extractor's window are cut at its length here: its own cut is random.
        waves = [resample(wave, sample_rate, self.sample_rate)[:limit] for wave in waveforms]
        inputs = self.feature_extractor(
            waves, sampling_rate=self.sample_rate, truncation="fusion" if self.fusion else "rand_trunc",
            return_tensors="pt",
        )
        features = inputs["input_features"].to(self.device, dtype=self.model.dtype)
        is_longer = torch.zeros(len(waves), 1, dtype=torch.bool, device=self.device)  # its random pick, undone
        output = self.model.get_audio_features(input_features=features, is_longer=is_longer)
        embeddings = output.pooler_output if hasattr(output, "pooler_output") else output
        return embeddings.float().cpu()

    def save_pretrained(self, directory: str | Path) -> None:
        self.model.save_pretrained(directory)
        self.feature_extractor.save_pretrained(directory)


def load_clap(spec: EncoderSpec, encoder_id: str, device: str = "cpu") -> ClapAudioEmbedder:
    """A CLAP model and its feature extractor from a local directory or the hub, in float32."""
    from transformers import ClapFeatureExtractor, ClapModel

    model, feature_extractor = load_hf_with_preprocessor(ClapModel, ClapFeatureExtractor, spec, "audio",
                                                         DEFAULT_SOURCES["clap"])
    return ClapAudioEmbedder(model, feature_extractor, encoder_id, device)
