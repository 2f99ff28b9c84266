"""The Image Aligner: the only trained part. Image embedding -> K tokens in GPT-2's input space."""

from __future__ import annotations

import hashlib

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class ImageAligner(ModelMixin, ConfigMixin):
    """MLP with Tanh (as Art2Mus: Linear - Tanh - Linear), producing `tokens` x `lm_width` vectors.

    Saved with `save_pretrained` (safetensors + config.json), so a checkpoint rebuilds without the repo.
    """

    config_name = "config.json"  # type: ignore[assignment]  # diffusers types ConfigMixin.config_name as None

    @register_to_config
    def __init__(self, image_dim: int, lm_width: int, tokens: int = 4, hidden_dim: int = 256, depth: int = 2) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError("depth must be at least 1")
        layers: list[nn.Module] = []
        width = image_dim
        for _ in range(depth - 1):
            layers += [nn.Linear(width, hidden_dim), nn.Tanh()]
            width = hidden_dim
        layers.append(nn.Linear(width, tokens * lm_width))
        self.mlp = nn.Sequential(*layers)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """[B, image_dim] -> [B, tokens, lm_width]."""
        c = self.config
        return self.mlp(image_embeds).view(-1, c["tokens"], c["lm_width"])


def state_dict_sha256(aligner: ImageAligner) -> str:
    """sha256 of the aligner's state dict (tensor names, dtypes, shapes, bytes): persisted as `weights_sha256`."""
    digest = hashlib.sha256()
    for name, tensor in sorted(aligner.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
