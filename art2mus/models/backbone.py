"""The frozen music prior's interface: AudioLDM2's UNet and GPT-2 with a latent codec and a vocoder.

Two profiles build a `Backbone` (`art2mus.models.loader.load_backbone` picks one):
- `audioldm2` (`art2mus.models.audioldm2`): `cvssp/audioldm2-music` through diffusers' AudioLDM2Pipeline;
  its VAE and HiFi-GAN are the codec and vocoder, the T5 stream is the empty prompt's embedding.
- `tiny` (`art2mus.models.tiny`): the same UNet and GPT-2 classes at toy sizes, the block-DCT codec,
  a Griffin-Lim vocoder and an audio encoder; trained by the `prior` stage on the sample.

The null conditioning of classifier-free guidance is `null_loa`: zeros by default, what both priors
saw as their dropped conditioning (AudioLDM2 trained its unconditional LOA as zeros), or GPT-2's LOA
for the empty prompt (diffusers' choice) with `backbone.null_conditioning: empty_prompt`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from art2mus.errors import Art2MusError
from art2mus.models.encoders.base import default_device

if TYPE_CHECKING:
    from diffusers.pipelines.audioldm2.modeling_audioldm2 import AudioLDM2UNet2DConditionModel
    from transformers import GPT2LMHeadModel

BACKBONE_FILE = "backbone.json"


class BackboneError(Art2MusError):
    """A backbone cannot be built or loaded."""


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """`auto`: $ART2MUS_DEVICE when set, else cuda when a GPU is visible, else cpu (as the encoders resolve it)."""
    if isinstance(name, torch.device):
        return name
    try:
        return torch.device(default_device() if name == "auto" else name)
    except RuntimeError as error:
        raise BackboneError(f"device {name!r}: {error} (use auto, cpu or cuda[:N])") from None


class LatentCodec(nn.Module):
    """What a backbone needs of its codec: [B, frames, n_mels] log-mel <-> scaled latents [B, C, h, w]."""

    def encode_distribution(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of the scaled latent posterior."""
        raise NotImplementedError

    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        """Log-mel -> scaled latents (deterministic)."""
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> log-mel."""
        raise NotImplementedError

    def decode_in_range(self, latents: torch.Tensor) -> torch.Tensor:
        """`decode`, kept in what the vocoder takes."""
        raise NotImplementedError


@dataclass
class Backbone:
    """Frozen parts of the model and the constant conditioning streams."""

    unet: AudioLDM2UNet2DConditionModel
    language_model: GPT2LMHeadModel
    scheduler: Any
    codec: LatentCodec
    vocoder: nn.Module
    t5_embeds: torch.Tensor  # [1, L, d_t5]: the second stream, constant (no language)
    t5_mask: torch.Tensor  # [1, L], all ones (checked at load: `predict` passes no mask)
    null_loa: torch.Tensor  # [1, max_new_tokens, d_lm]: the null conditioning for guidance
    info: dict[str, Any] = field(default_factory=dict)  # profile, source, revision, identity, sizes
    audio_encoder: nn.Module | None = None  # tiny profile: oracle conditioning from audio

    def __post_init__(self) -> None:
        if not bool(self.t5_mask.bool().all()):
            # diffusers' AudioLDM2 blocks shift their arguments under gradient checkpointing when
            # encoder_attention_mask_1 is given, so the constant stream must need no mask at all.
            raise BackboneError(f"the constant T5 stream must be unmasked, got mask {self.t5_mask.tolist()}")

    @property
    def lm_width(self) -> int:
        return int(self.language_model.config.n_embd)

    @property
    def max_new_tokens(self) -> int:
        return int(self.info["max_new_tokens"])

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return tuple(self.info["latent_shape"])

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def eval(self) -> Backbone:
        """Frozen: eval mode (GPT-2 has dropout) and no gradients."""
        for module in self.modules():
            module.eval()
            module.requires_grad_(False)
        return self

    def modules(self) -> list[nn.Module]:
        parts = [self.unet, self.language_model, self.codec, self.vocoder, self.audio_encoder]
        return [part for part in parts if part is not None]

    def to(self, device: torch.device | str) -> Backbone:
        """Every part and constant stream on `device`."""
        device = resolve_device(device)
        for module in self.modules():
            module.to(device)
        self.t5_embeds, self.t5_mask, self.null_loa = (
            tensor.to(device) for tensor in (self.t5_embeds, self.t5_mask, self.null_loa))
        return self

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute the frozen UNet's activations in backward (GPT-2's are negligible, and transformers
        checkpoints only in train mode, which would switch its dropout on)."""
        if enabled:
            self.unet.enable_gradient_checkpointing()
        else:
            self.unet.disable_gradient_checkpointing()

    def language_of_audio(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """GPT-2 generates `max_new_tokens` LOA vectors from [B, K, d_lm] inputs (differentiable)."""
        from diffusers.pipelines.audioldm2.pipeline_audioldm2 import AudioLDM2Pipeline

        inputs_embeds = inputs_embeds.to(self.device)
        mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
        # generate_language_model only needs `language_model`; borrow it unbound.
        return AudioLDM2Pipeline.generate_language_model(
            _LanguageModelHolder(self.language_model),  # type: ignore[arg-type]  # duck-typed: reads only this
            inputs_embeds, max_new_tokens=self.max_new_tokens,
            attention_mask=mask,
        )

    def null_like(self, loa: torch.Tensor) -> torch.Tensor:
        """The null conditioning, one row per row of `loa`, on its device and dtype."""
        return self.null_loa.to(loa.device, loa.dtype).expand_as(loa)

    def predict(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, loa: torch.Tensor) -> torch.Tensor:
        """The UNet's output (ε, v or x0 per the scheduler's prediction_type) under LOA conditioning."""
        batch = noisy_latents.shape[0]
        t5 = self.t5_embeds.to(noisy_latents.device, loa.dtype).expand(batch, -1, -1)
        # No mask for the T5 stream: it is all ones (checked in __post_init__), and passing one breaks
        # diffusers' checkpointed blocks.
        return self.unet(noisy_latents, timesteps.to(noisy_latents.device), encoder_hidden_states=loa,
                         encoder_hidden_states_1=t5, encoder_attention_mask_1=None).sample


class _LanguageModelHolder:
    """The one attribute AudioLDM2Pipeline.generate_language_model reads from its pipeline."""

    def __init__(self, language_model: GPT2LMHeadModel) -> None:
        self.language_model = language_model
