"""The frozen music prior: AudioLDM2's UNet and GPT-2 with a latent codec and a vocoder.

Two profiles share one loader, `load_backbone(source)`:
- `audioldm2`: `cvssp/audioldm2-music` (hub id or local path) through diffusers' AudioLDM2Pipeline.
  Its VAE and HiFi-GAN are the codec and vocoder; the T5 stream gets the empty prompt's embedding
  and the null conditioning (for guidance) is the empty prompt's LOA, as AudioLDM2 itself uses.
- `tiny`: the same UNet and GPT-2 classes built from small configs in code, plus the tiny codec,
  vocoder and audio encoder; written with `save_pretrained` and read back by the same loader.
  Its T5 stream is a constant zero embedding (no language enters) and its null LOA is zeros,
  exactly what the prior saw in its conditioning dropout.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from art2mus.config import AudioParams, BackboneParams, TinyBackboneParams
from art2mus.errors import Art2MusError
from art2mus.models.audio import GriffinLimVocoder, MelCodec, crop_frames

BACKBONE_FILE = "backbone.json"
CONDITIONING_FILE = "conditioning.safetensors"
TINY_COMPONENTS = ("unet", "language_model", "scheduler", "codec", "vocoder", "audio_encoder")
# AudioLDM2's own noise schedule (its scheduler config), used for the tiny prior too.
AUDIOLDM2_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0195,
                          beta_schedule="scaled_linear", prediction_type="epsilon", clip_sample=False)


class BackboneError(Art2MusError):
    """A backbone cannot be built or loaded."""


class AudioTokenEncoder(nn.Module):
    """Tiny profile's stand-in for AudioMAE: a latent -> K tokens in GPT-2's input space."""

    def __init__(self, latent_channels: int, width: int, tokens: int) -> None:
        super().__init__()
        self.tokens, self.width = tokens, width
        self.features = nn.Sequential(
            nn.Conv2d(latent_channels, 64, 3, padding=1), nn.SiLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.to_tokens = nn.Linear(64, tokens * width)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.to_tokens(self.features(latents)).view(-1, self.tokens, self.width)


@dataclass
class Backbone:
    """Frozen parts of the model and the constant conditioning streams."""

    unet: nn.Module
    language_model: nn.Module
    scheduler: Any
    codec: nn.Module
    vocoder: nn.Module
    t5_embeds: torch.Tensor  # [1, L, d_t5]: the second stream, constant (no language)
    t5_mask: torch.Tensor  # [1, L]
    null_loa: torch.Tensor  # [1, max_new_tokens, d_lm]: the null conditioning for guidance
    info: dict[str, Any] = field(default_factory=dict)  # profile, source, revision, sizes, hash
    audio_encoder: nn.Module | None = None  # tiny profile: oracle conditioning from audio

    @property
    def lm_width(self) -> int:
        return int(self.language_model.config.n_embd)

    @property
    def max_new_tokens(self) -> int:
        return int(self.info["max_new_tokens"])

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return tuple(self.info["latent_shape"])

    def eval(self) -> "Backbone":
        """Frozen: eval mode (GPT-2 has dropout) and no gradients."""
        for module in self.modules():
            module.eval()
            module.requires_grad_(False)
        return self

    def modules(self) -> list[nn.Module]:
        parts = [self.unet, self.language_model, self.codec, self.vocoder, self.audio_encoder]
        return [part for part in parts if part is not None]

    def language_of_audio(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """GPT-2 generates `max_new_tokens` LOA vectors from [B, K, d_lm] inputs (differentiable)."""
        from diffusers.pipelines.audioldm2.pipeline_audioldm2 import AudioLDM2Pipeline

        mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
        # generate_language_model only needs `language_model`; borrow it unbound.
        generated = AudioLDM2Pipeline.generate_language_model(
            _LanguageModelHolder(self.language_model), inputs_embeds, max_new_tokens=self.max_new_tokens,
            attention_mask=mask,
        )
        return generated

    def predict(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, loa: torch.Tensor) -> torch.Tensor:
        """The UNet's output (ε, v or x0 per the scheduler's prediction_type) under LOA conditioning."""
        batch = noisy_latents.shape[0]
        t5 = self.t5_embeds.to(noisy_latents.device, loa.dtype).expand(batch, -1, -1)
        mask = self.t5_mask.to(noisy_latents.device).expand(batch, -1)
        return self.unet(noisy_latents, timesteps, encoder_hidden_states=loa, encoder_hidden_states_1=t5,
                         encoder_attention_mask_1=mask).sample

    def to(self, device: torch.device | str) -> "Backbone":
        for module in self.modules():
            module.to(device)
        return self

    def save_pretrained(self, path: str | Path) -> None:
        """Write every part (tiny profile) so `load_backbone(path)` rebuilds it exactly."""
        from safetensors.torch import save_file

        if self.info.get("profile") != "tiny":
            raise BackboneError("only the tiny backbone is saved; the real one is referenced by its hub id")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(path / "unet")
        self.language_model.save_pretrained(path / "language_model")
        self.scheduler.save_pretrained(path / "scheduler")
        self.codec.save_pretrained(path / "codec")
        self.vocoder.save_pretrained(path / "vocoder")
        save_file(self.audio_encoder.state_dict(), path / "audio_encoder.safetensors")
        save_file({"t5_embeds": self.t5_embeds.contiguous(), "t5_mask": self.t5_mask.contiguous(),
                   "null_loa": self.null_loa.contiguous()}, path / CONDITIONING_FILE)
        info = {key: value for key, value in self.info.items() if key != "weights_sha256"}
        (path / BACKBONE_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


class _LanguageModelHolder:
    """The one attribute AudioLDM2Pipeline.generate_language_model reads from its pipeline."""

    def __init__(self, language_model: nn.Module) -> None:
        self.language_model = language_model


def tiny_unet(config: TinyBackboneParams, latent_channels: int) -> nn.Module:
    """AudioLDM2's UNet class at a tiny size; both cross-attention streams present.

    One level per entry of `unet_channels`; the `attention_levels` lowest-resolution levels (and the
    mid block) carry the cross-attention, the finer ones are plain ResNet levels.
    """
    from diffusers.pipelines.audioldm2.modeling_audioldm2 import AudioLDM2UNet2DConditionModel

    cross = (None, config.lm_width, config.t5_width)
    levels = len(config.unet_channels)
    attended = min(config.attention_levels, levels)
    down = tuple("CrossAttnDownBlock2D" if i >= levels - attended else "DownBlock2D" for i in range(levels))
    up = tuple("CrossAttnUpBlock2D" if i < attended else "UpBlock2D" for i in range(levels))
    return AudioLDM2UNet2DConditionModel(
        sample_size=None, in_channels=latent_channels, out_channels=latent_channels,
        down_block_types=down, up_block_types=up,
        block_out_channels=tuple(config.unet_channels), layers_per_block=config.layers_per_block,
        norm_num_groups=8, cross_attention_dim=(cross,) * levels, attention_head_dim=config.attention_head_dim,
    )


def tiny_language_model(config: TinyBackboneParams, max_new_tokens: int) -> nn.Module:
    """GPT-2 (LM head class, as AudioLDM2 uses) at width `lm_width`; it never sees token ids."""
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(
        n_embd=config.lm_width, n_layer=config.lm_layers, n_head=config.lm_heads, vocab_size=2,
        bos_token_id=0, eos_token_id=1, n_positions=config.audio_tokens + max_new_tokens + 8,
        max_new_tokens=max_new_tokens,
    ))


def build_tiny_backbone(params: BackboneParams, audio: AudioParams, seed: int = 0) -> Backbone:
    """A freshly initialised (untrained) tiny backbone, deterministic in `seed`."""
    from diffusers import DDPMScheduler

    config = params.tiny
    torch.manual_seed(seed)
    codec = MelCodec(n_mels=audio.n_mels, frames=crop_frames(audio), fold_time=config.fold_time,
                     fold_mel=config.fold_mel)
    channels = codec.latent_channels
    backbone = Backbone(
        unet=tiny_unet(config, channels),
        language_model=tiny_language_model(config, params.max_new_tokens),
        # AudioLDM2's schedule; the target is configurable: with epsilon a briefly trained tiny UNet's
        # small error at t ~ 999 is amplified 1/sqrt(alpha_bar) ~ 80x into x0 by the sampler.
        scheduler=DDPMScheduler(**{**AUDIOLDM2_SCHEDULE, "prediction_type": config.prediction_type}),
        codec=codec,
        vocoder=GriffinLimVocoder(sample_rate=audio.sample_rate, n_fft=audio.n_fft,
                                  hop_length=audio.hop_length, n_mels=audio.n_mels),
        t5_embeds=torch.zeros(1, 1, config.t5_width),
        t5_mask=torch.ones(1, 1, dtype=torch.long),
        null_loa=torch.zeros(1, params.max_new_tokens, config.lm_width),
        audio_encoder=AudioTokenEncoder(channels, config.lm_width, config.audio_tokens),
        info={"profile": "tiny", "source": "tiny", "revision": "", "max_new_tokens": params.max_new_tokens,
              "latent_shape": list(codec.latent_shape), "sample_rate": audio.sample_rate,
              "hop_length": audio.hop_length, "n_mels": audio.n_mels, "crop_frames": crop_frames(audio),
              "tiny": config.model_dump(mode="json")},
    )
    return backbone


def weights_sha256(path: Path) -> str:
    """One hash over every weight and config file of a saved backbone (its identity)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def load_tiny_backbone(path: Path) -> Backbone:
    """Read a tiny backbone written by `Backbone.save_pretrained`."""
    from diffusers import DDPMScheduler
    from diffusers.pipelines.audioldm2.modeling_audioldm2 import AudioLDM2UNet2DConditionModel
    from safetensors.torch import load_file
    from transformers import GPT2LMHeadModel

    info = json.loads((path / BACKBONE_FILE).read_text())
    missing = [name for name in (*TINY_COMPONENTS[:-1], "audio_encoder.safetensors", CONDITIONING_FILE)
               if not (path / name).exists()]
    if missing:
        raise BackboneError(f"{path}: incomplete tiny backbone, missing {', '.join(missing)}")
    codec = MelCodec.from_pretrained(path / "codec")
    config = TinyBackboneParams.model_validate(info["tiny"])
    audio_encoder = AudioTokenEncoder(codec.latent_channels, config.lm_width, config.audio_tokens)
    audio_encoder.load_state_dict(load_file(path / "audio_encoder.safetensors"))
    conditioning = load_file(path / CONDITIONING_FILE)
    backbone = Backbone(
        unet=AudioLDM2UNet2DConditionModel.from_pretrained(path / "unet"),
        language_model=GPT2LMHeadModel.from_pretrained(path / "language_model"),
        scheduler=DDPMScheduler.from_pretrained(path / "scheduler"),
        codec=codec,
        vocoder=GriffinLimVocoder.from_pretrained(path / "vocoder"),
        t5_embeds=conditioning["t5_embeds"], t5_mask=conditioning["t5_mask"], null_loa=conditioning["null_loa"],
        audio_encoder=audio_encoder,
        info={**info, "weights_sha256": weights_sha256(path)},
    )
    return backbone.eval()


def write_backbone_reference(params: BackboneParams, path: str | Path) -> None:
    """The real profile's `prior` output: which AudioLDM2 to load (no weights are copied)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    info = {"profile": params.profile, "source": params.source, "revision": params.revision,
            "max_new_tokens": params.max_new_tokens}
    (path / BACKBONE_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


def load_backbone(path: str | Path) -> Backbone:
    """The backbone the `prior` stage wrote at `path`: tiny weights, or a reference to AudioLDM2."""
    path = Path(path)
    if not (path / BACKBONE_FILE).is_file():
        raise BackboneError(f"no backbone at {path} (run the `prior` stage first)")
    info = json.loads((path / BACKBONE_FILE).read_text())
    if info.get("profile") == "tiny":
        return load_tiny_backbone(path)
    from art2mus.models.audioldm2 import load_audioldm2_backbone  # imports this module: import here

    return load_audioldm2_backbone(info["source"], info["revision"], int(info["max_new_tokens"]))
