"""CLIP image encoder (`clip` kind): `CLIPVisionModelWithProjection` + `CLIPImageProcessor`.

Weights come from a hub id (default openai/clip-vit-large-patch14) or a local directory written by
`save_pretrained`; a saved tiny image encoder is such a directory. Embeddings are the model's
`image_embeds`, unnormalised.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image

from art2mus.config import EncoderSpec
from art2mus.models.encoders.base import DEFAULT_SOURCES, load_hf_with_preprocessor, resolve_device, rgb


class ClipImageEncoder:
    """`CLIPVisionModelWithProjection` + its `CLIPImageProcessor`; returns `image_embeds`."""

    shared_space: str | None = None

    def __init__(self, model: Any, processor: Any, encoder_id: str, device: str = "cpu") -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.encoder_id = encoder_id
        self.dim = int(model.config.projection_dim)

    @torch.inference_mode()
    def embed_images(self, images: list[Image.Image]) -> torch.Tensor:
        if not images:
            return torch.empty(0, self.dim)
        pixels = self.processor(images=rgb(images), return_tensors="pt")["pixel_values"]
        output = self.model(pixel_values=pixels.to(self.device, dtype=self.model.dtype))
        return output.image_embeds.float().cpu()

    def save_pretrained(self, directory: str | Path) -> None:
        self.model.save_pretrained(directory)
        self.processor.save_pretrained(directory)


def load_clip(spec: EncoderSpec, encoder_id: str, device: str = "cpu") -> ClipImageEncoder:
    """A CLIP vision tower (or a saved tiny one) from a local directory or the hub, in float32."""
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    model, processor = load_hf_with_preprocessor(CLIPVisionModelWithProjection, CLIPImageProcessor, spec, "image",
                                                 DEFAULT_SOURCES["clip"])
    return ClipImageEncoder(model, processor, encoder_id, device)
