"""The tiny profile: AudioLDM2's UNet and GPT-2 classes at toy sizes, the block-DCT codec, a Griffin-Lim
vocoder and an audio encoder (AudioMAE's role), built from configs in code and trained by the `prior` stage.

Written with `save_tiny_backbone` and read back by `load_tiny_backbone` (through `load_backbone`).
Its T5 stream is a constant zero embedding (no language enters) and its null LOA is zeros, exactly
what the prior saw in its conditioning dropout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from art2mus.config import AudioParams, BackboneParams, TinyBackboneParams
from art2mus.io import check_model_folder, read_json, read_safetensors, rebuild_hint, verified_sha256_tree
from art2mus.models.audio import GriffinLimVocoder, MelCodec, crop_frames
from art2mus.models.backbone import BACKBONE_FILE, Backbone, BackboneError

if TYPE_CHECKING:
    from diffusers.pipelines.audioldm2.modeling_audioldm2 import AudioLDM2UNet2DConditionModel
    from transformers import GPT2LMHeadModel

PROFILE = "tiny"
CONDITIONING_FILE = "conditioning.safetensors"
TINY_COMPONENTS = ("unet", "language_model", "scheduler", "codec", "vocoder", "audio_encoder")
# AudioLDM2's own noise schedule (its scheduler config), used for the tiny prior too.
AUDIOLDM2_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0195,
                          beta_schedule="scaled_linear", prediction_type="epsilon", clip_sample=False)


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


def tiny_unet(config: TinyBackboneParams, latent_channels: int) -> AudioLDM2UNet2DConditionModel:
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


def tiny_language_model(config: TinyBackboneParams, max_new_tokens: int) -> GPT2LMHeadModel:
    """GPT-2 (LM head class, as AudioLDM2's generation needs) at width `lm_width`; it never sees token ids."""
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(
        n_embd=config.lm_width, n_layer=config.lm_layers, n_head=config.lm_heads, vocab_size=2,
        bos_token_id=0, eos_token_id=1, n_positions=config.audio_tokens + max_new_tokens + 8,
        max_new_tokens=max_new_tokens,  # type: ignore[call-arg]  # PretrainedConfig keeps extra kwargs; stubs omit them
    ))


def build_tiny_backbone(params: BackboneParams, audio: AudioParams, seed: int = 0) -> Backbone:
    """A freshly initialised (untrained) tiny backbone, deterministic in `seed`."""
    from diffusers import DDPMScheduler

    config = params.tiny
    torch.manual_seed(seed)
    codec = MelCodec(n_mels=audio.n_mels, frames=crop_frames(audio), fold_time=config.fold_time,
                     fold_mel=config.fold_mel)
    channels = codec.latent_channels
    return Backbone(
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
        info={"profile": PROFILE, "source": PROFILE, "revision": "", "max_new_tokens": params.max_new_tokens,
              "latent_shape": list(codec.latent_shape), "sample_rate": audio.sample_rate,
              "hop_length": audio.hop_length, "n_mels": audio.n_mels, "crop_frames": crop_frames(audio),
              "null_conditioning": "zeros", "tiny": config.model_dump(mode="json")},
    )


def tiny_parts(backbone: Backbone) -> tuple[MelCodec, GriffinLimVocoder, nn.Module]:
    """The parts only the tiny profile has (codec, vocoder, audio encoder), with their types checked."""
    codec, vocoder, audio_encoder = backbone.codec, backbone.vocoder, backbone.audio_encoder
    if not isinstance(codec, MelCodec) or not isinstance(vocoder, GriffinLimVocoder) or audio_encoder is None:
        raise BackboneError("not a tiny backbone: it needs a MelCodec, a GriffinLimVocoder and an audio encoder")
    return codec, vocoder, audio_encoder


def save_tiny_backbone(backbone: Backbone, path: str | Path) -> None:
    """Write every part of a tiny backbone so `load_tiny_backbone(path)` rebuilds it exactly."""
    from safetensors.torch import save_file

    if backbone.info.get("profile") != PROFILE:
        raise BackboneError("only the tiny backbone is saved; the real one is referenced by its hub id or folder")
    codec, vocoder, audio_encoder = tiny_parts(backbone)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    backbone.unet.save_pretrained(path / "unet")
    backbone.language_model.save_pretrained(path / "language_model")
    backbone.scheduler.save_pretrained(path / "scheduler")
    codec.save_pretrained(path / "codec")
    vocoder.save_pretrained(path / "vocoder")
    save_file({k: v.detach().cpu().contiguous() for k, v in audio_encoder.state_dict().items()},
              path / "audio_encoder.safetensors")
    save_file({"t5_embeds": backbone.t5_embeds.cpu().contiguous(), "t5_mask": backbone.t5_mask.cpu().contiguous(),
               "null_loa": backbone.null_loa.cpu().contiguous()}, path / CONDITIONING_FILE)
    info = {key: value for key, value in backbone.info.items() if key not in ("folder_sha256", "identity")}
    (path / BACKBONE_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


def folder_sha256(path: Path) -> str:
    """The identity of a saved tiny backbone: the sha256 of its folder's files (each file hashed once per process
    while it is unchanged, `verified_sha256_tree`)."""
    return verified_sha256_tree(path)


def load_tiny_backbone(path: Path, device: str | torch.device = "cpu") -> Backbone:
    """Read a tiny backbone written by `save_tiny_backbone`; a truncated or corrupt file is named, not a
    library's traceback. Its identity (`tiny@<hash>`) is the hash of the files it was read from."""
    from diffusers import DDPMScheduler
    from diffusers.pipelines.audioldm2.modeling_audioldm2 import AudioLDM2UNet2DConditionModel
    from transformers import GPT2LMHeadModel

    info = read_json(path / BACKBONE_FILE)
    missing = [name for name in (*TINY_COMPONENTS[:-1], "audio_encoder.safetensors", CONDITIONING_FILE)
               if not (path / name).exists()]
    if missing:
        raise BackboneError(f"{path}: incomplete tiny backbone, missing {', '.join(missing)}")
    check_model_folder(path)
    try:
        codec = MelCodec.from_pretrained(path / "codec")
        config = TinyBackboneParams.model_validate(info["tiny"])
        audio_encoder = AudioTokenEncoder(codec.latent_channels, config.lm_width, config.audio_tokens)
        audio_encoder.load_state_dict(read_safetensors(path / "audio_encoder.safetensors"))
        conditioning = read_safetensors(path / CONDITIONING_FILE)
        parts = dict(
            unet=AudioLDM2UNet2DConditionModel.from_pretrained(path / "unet"),
            language_model=GPT2LMHeadModel.from_pretrained(path / "language_model", dtype=torch.float32),
            scheduler=DDPMScheduler.from_pretrained(path / "scheduler"),
            vocoder=GriffinLimVocoder.from_pretrained(path / "vocoder"),
        )
    except (OSError, ValueError, KeyError, RuntimeError) as error:  # files that read but do not fit together
        raise BackboneError(f"{path}: not a loadable tiny backbone ({type(error).__name__}: {str(error)[:300]}); "
                            f"{rebuild_hint(path)}") from None
    digest = folder_sha256(path)
    backbone = Backbone(
        **parts, codec=codec,
        t5_embeds=conditioning["t5_embeds"], t5_mask=conditioning["t5_mask"], null_loa=conditioning["null_loa"],
        audio_encoder=audio_encoder,
        info={"null_conditioning": "zeros", **info, "folder_sha256": digest, "identity": f"tiny@{digest}"},
    )
    return backbone.eval().to(device)
