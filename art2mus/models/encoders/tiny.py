"""Tiny encoders (`tiny` kind): real architectures at toy sizes, built in code with a fixed seed.

No downloads: built from the configs below, or loaded from a directory their `save_pretrained` wrote.
- Image: a `CLIPVisionModelWithProjection` (64 px, patch 8, width 256, 2 layers, 256-d
  `image_embeds`) with its `CLIPImageProcessor`, wrapped as a `ClipImageEncoder`.
- Audio: a `ResNetModel` (2 stages, 32/64 channels) on a per-clip standardised log-mel (16 kHz,
  n_fft 1024, hop 160, 64 mels, fmax 8 kHz), pooled by statistics over the last feature map (mean,
  std and mean |time difference| per channel, 192-d).
Both are unnormalised. Random weights keep what the sample plants: linear probes recover
palette/register, texture/tempo and composition/timbre from these embeddings
(tests/model/test_encoders.py).

A tiny model built in code is identified by `tiny_digest`: a hash of its config, seed and the
torch/transformers versions.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from art2mus.errors import Art2MusError
from art2mus.models.encoders.base import load_hf_model, resample, resolve_device, seeded_build
from art2mus.models.encoders.clip import ClipImageEncoder

TINY_SEED = 0
TINY_VERSION = 1  # bump when the tiny architectures or their pooling change
TINY_IMAGE_CONFIG: dict[str, Any] = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 64,
    "patch_size": 8,
    "projection_dim": 256,
}
TINY_IMAGE_PROCESSOR: dict[str, Any] = {"size": {"shortest_edge": 64}, "crop_size": {"height": 64, "width": 64}}
TINY_AUDIO_CONFIG: dict[str, Any] = {
    "num_channels": 1,
    "embedding_size": 32,
    "hidden_sizes": [32, 64],
    "depths": [1, 1],
    "layer_type": "basic",
}
TINY_LOG_MEL = {"sample_rate": 16000, "n_fft": 1024, "hop_length": 160, "n_mels": 64, "f_min": 0.0, "f_max": 8000.0}
LOG_MEL_KEY = "art2mus_log_mel"  # where a tiny audio embedder's config.json keeps its front-end


def tiny_digest(role: str, seed: int = TINY_SEED) -> str:
    """Hash of everything that determines a tiny model built in code."""
    import transformers

    recipe: dict[str, Any]
    if role == "image":
        recipe = {"arch": "CLIPVisionModelWithProjection", "config": TINY_IMAGE_CONFIG,
                  "processor": TINY_IMAGE_PROCESSOR}
    else:
        recipe = {"arch": "ResNetModel+stats-pooling", "config": TINY_AUDIO_CONFIG, "log_mel": TINY_LOG_MEL}
    recipe.update(seed=seed, version=TINY_VERSION, torch=torch.__version__.split("+")[0],
                  transformers=transformers.__version__)
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode("utf-8")).hexdigest()


def tiny_encoder_id(role: str, seed: int = TINY_SEED) -> str:
    """The encoder id of a tiny model built in code."""
    return f"tiny:{tiny_digest(role, seed)[:16]}"


# ---- image: a tiny CLIP ---------------------------------------------------------------------------
def build_tiny_image_encoder(seed: int = TINY_SEED, device: str = "cpu") -> ClipImageEncoder:
    """The tiny image encoder: a CLIP vision tower at toy size, seeded (same weights every time)."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    model = seeded_build(lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_IMAGE_CONFIG)), seed)
    processor = CLIPImageProcessor(**TINY_IMAGE_PROCESSOR)
    return ClipImageEncoder(model, processor, tiny_encoder_id("image", seed), device)


# ---- audio: log-mel + ResNet + statistics pooling ---------------------------------------------------
class TinyAudioEmbedder:
    """A `ResNetModel` on a standardised log-mel, statistics-pooled (mean, std, mean |d/dt|)."""

    shared_space: str | None = None

    def __init__(self, model: Any, encoder_id: str, device: str = "cpu") -> None:
        import torchaudio

        front_end = getattr(model.config, LOG_MEL_KEY, None)
        if not isinstance(front_end, dict):
            raise Art2MusError(f"not a tiny audio embedder: its config.json has no {LOG_MEL_KEY!r}")
        self.log_mel = dict(front_end)
        self.sample_rate = int(front_end["sample_rate"])
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=self.sample_rate, n_fft=int(front_end["n_fft"]), hop_length=int(front_end["hop_length"]),
            n_mels=int(front_end["n_mels"]), f_min=float(front_end["f_min"]), f_max=float(front_end["f_max"]),
        )
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.encoder_id = encoder_id
        self.dim = 3 * int(model.config.hidden_sizes[-1])

    def features(self, wave: np.ndarray) -> torch.Tensor:
        """[1, n_mels, frames] per-clip standardised log-mel of one waveform."""
        mel = torch.log(torch.clamp(self.mel(torch.from_numpy(wave)), min=1e-5))
        return ((mel - mel.mean()) / (mel.std() + 1e-5)).unsqueeze(0)

    @torch.inference_mode()
    def embed_audio(self, waveforms: list[np.ndarray], sample_rate: int) -> torch.Tensor:
        embeddings = torch.empty(len(waveforms), self.dim)
        inputs = [self.features(resample(wave, sample_rate, self.sample_rate)) for wave in waveforms]
        by_length: dict[int, list[int]] = {}
        for index, item in enumerate(inputs):
            by_length.setdefault(item.shape[-1], []).append(index)
        for indices in by_length.values():
            batch = torch.stack([inputs[index] for index in indices]).to(self.device, dtype=self.model.dtype)
            hidden = self.model(pixel_values=batch).last_hidden_state.float()  # [B, C, F', T']
            pooled = torch.cat([
                hidden.mean(dim=(2, 3)),
                hidden.std(dim=(2, 3)),
                hidden.diff(dim=3).abs().mean(dim=(2, 3)),
            ], dim=1)
            embeddings[indices] = pooled.cpu()
        return embeddings

    def save_pretrained(self, directory: str | Path) -> None:
        self.model.save_pretrained(directory)


def build_tiny_audio_embedder(seed: int = TINY_SEED, device: str = "cpu") -> TinyAudioEmbedder:
    """The tiny audio embedder: a toy ResNet on log-mels, seeded (same weights every time)."""
    from transformers import ResNetConfig, ResNetModel

    front_end: dict[str, Any] = {LOG_MEL_KEY: dict(TINY_LOG_MEL)}  # kept in config.json as an extra key
    config = ResNetConfig(**TINY_AUDIO_CONFIG, **front_end)
    model = seeded_build(lambda: ResNetModel(config), seed)
    return TinyAudioEmbedder(model, tiny_encoder_id("audio", seed), device)


def load_tiny_audio(path: Path, encoder_id: str, device: str = "cpu") -> TinyAudioEmbedder:
    """A tiny audio embedder saved by `save_pretrained`, in float32."""
    from transformers import ResNetModel

    model = load_hf_model(ResNetModel, str(path), "main", "tiny", "audio", local=True)
    return TinyAudioEmbedder(model, encoder_id, device)
