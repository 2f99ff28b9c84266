"""The real profile: `cvssp/audioldm2-music` (hub id or local folder) through diffusers' AudioLDM2Pipeline.

Only the UNet, GPT-2, scheduler, VAE (as the codec) and HiFi-GAN (as the vocoder) are kept. The text
encoders run once, on the EMPTY prompt: its T5 embedding is the constant second stream and its
generated LOA is the null conditioning for guidance, as AudioLDM2 itself uses. No language about
the image ever enters the model.

The evaluation's caption baseline is the exception, by design: `load_text_pipeline` rebuilds the
full text-conditioned AudioLDM2Pipeline around the backbone's own parts (CLAP + T5 + projection +
tokenizers loaded from the same source) and `render_captions` samples it with the same scheduler,
steps, guidance, length and initial noise as `Art2MusPipeline.render`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from art2mus.models.backbone import Backbone, BackboneError
from art2mus.models.pipeline import Art2MusPipeline, GenerationConfig, limit_peaks, make_scheduler

PROFILE = "audioldm2"
DEFAULT_SECONDS = 10.24  # AudioLDM2's default length: 1024 mel frames at 16 kHz, hop 160


class LatentCodecAdapter(nn.Module):
    """AudioLDM2's VAE as a codec: [B, frames, n_mels] log-mel <-> scaled latents [B, C, frames/f, n_mels/f]."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def scale_factor(self) -> int:
        """Downsampling of the VAE along time and mel (AudioLDM2Pipeline's `vae_scale_factor`)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        """[B, frames, n_mels] -> scaled latents (the posterior's mode, deterministic)."""
        latents = self.vae.encode(mel[:, None].to(self.vae.dtype)).latent_dist.mode()
        return latents * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> [B, frames, n_mels] log-mel."""
        return self.vae.decode(latents.to(self.vae.dtype) / self.scaling_factor).sample[:, 0]

    def decode_in_range(self, latents: torch.Tensor) -> torch.Tensor:
        """AudioLDM2's HiFi-GAN takes the VAE's output as it is."""
        return self.decode(latents)


def is_local_source(source: str) -> bool:
    """A source naming a folder (existing, or written as a path) rather than a hub id."""
    return Path(source).expanduser().exists() or source.startswith(("/", ".", "~")) or source.count("/") > 1


def load_pipeline(source: str, revision: str, **components):
    """AudioLDM2Pipeline from a local folder (revision unused) or the hub; failures become a BackboneError.

    `components` are parts already in memory (e.g. the backbone's UNet): diffusers uses them and loads the rest.
    """
    from diffusers import AudioLDM2Pipeline

    hint = "set backbone.source to a local copy of the AudioLDM2 pipeline folder"
    if is_local_source(source):
        folder = Path(source).expanduser()
        if not (folder / "model_index.json").is_file():
            raise BackboneError(f"AudioLDM2 source {source!r}: no model_index.json there; {hint}")
        try:
            return AudioLDM2Pipeline.from_pretrained(folder, **components)
        except (OSError, ValueError, KeyError) as error:
            raise BackboneError(
                f"AudioLDM2 source {source!r} is not a loadable AudioLDM2 pipeline folder; {hint} "
                f"({error.__class__.__name__}: {str(error)[:300]})"
            ) from None
    try:
        return AudioLDM2Pipeline.from_pretrained(source, revision=revision, **components)
    except (OSError, ValueError) as error:
        raise BackboneError(
            f"AudioLDM2 weights {source!r}@{revision} are not in the local cache and cannot be downloaded here; "
            f"{hint} ({error.__class__.__name__}: {str(error)[:300]})"
        ) from None


def default_frames(sample_rate: int, hop_length: int, scale_factor: int) -> int:
    """Mel frames of AudioLDM2's default length, rounded up to the VAE's downsampling as the pipeline does."""
    frames = round(DEFAULT_SECONDS * sample_rate / hop_length)
    return math.ceil(frames / scale_factor) * scale_factor


def load_audioldm2_backbone(source: str, revision: str, max_new_tokens: int, device: str = "cpu") -> Backbone:
    """cvssp/audioldm2-music (hub id or local path) as a frozen Backbone, conditioned only by the empty prompt."""
    pipe = load_pipeline(source, revision)
    pipe.to(device)
    with torch.no_grad():
        t5_embeds, t5_mask, null_loa = pipe.encode_prompt(
            "", torch.device(device), num_waveforms_per_prompt=1, do_classifier_free_guidance=False,
            max_new_tokens=max_new_tokens,
        )
    vocoder, vae = pipe.vocoder, pipe.vae
    codec = LatentCodecAdapter(vae)
    sample_rate = int(vocoder.config.sampling_rate)
    n_mels = int(vocoder.config.model_in_dim)
    hop_length = int(math.prod(vocoder.config.upsample_rates))
    scale = codec.scale_factor
    frames = default_frames(sample_rate, hop_length, scale)
    latent_shape = [int(vae.config.latent_channels), frames // scale, n_mels // scale]
    backbone = Backbone(
        unet=pipe.unet, language_model=pipe.language_model, scheduler=pipe.scheduler, codec=codec,
        vocoder=vocoder, t5_embeds=t5_embeds.detach(), t5_mask=t5_mask.detach(), null_loa=null_loa.detach(),
        info={"profile": PROFILE, "source": source, "revision": revision, "max_new_tokens": max_new_tokens,
              "sample_rate": sample_rate, "n_mels": n_mels, "hop_length": hop_length, "crop_frames": frames,
              "latent_shape": latent_shape, "vae_scale_factor": scale},
    )
    return backbone.eval()


def load_text_pipeline(backbone: Backbone):
    """diffusers' text-conditioned AudioLDM2Pipeline around the backbone's own UNet, GPT-2, VAE and vocoder.

    Only the text side (CLAP, T5, projection model, tokenizers, feature extractor) is loaded from the
    backbone's source; a BackboneError says why when it cannot be.
    """
    if backbone.info.get("profile") != PROFILE:
        raise BackboneError(f"the {backbone.info.get('profile')} backbone has no text encoders: no language to "
                            "condition on (the caption baseline needs the real AudioLDM2)")
    pipe = load_pipeline(backbone.info["source"], backbone.info["revision"], unet=backbone.unet,
                         language_model=backbone.language_model, vae=backbone.codec.vae, vocoder=backbone.vocoder,
                         scheduler=backbone.scheduler)
    for part in (pipe.text_encoder, pipe.text_encoder_2, pipe.projection_model):
        part.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def render_captions(pipeline: Art2MusPipeline, text_pipeline, captions: list[str],
                    config: GenerationConfig | None = None) -> list[np.ndarray]:
    """One waveform per caption through AudioLDM2's own prompt path (CLAP + T5 -> GPT-2), sampled exactly
    as `pipeline.render` samples: same scheduler, steps, guidance, length, per-batch initial noise, peak limit."""
    config = config or GenerationConfig()
    backbone = pipeline.backbone
    text_pipeline.scheduler = make_scheduler(backbone, config.scheduler)
    shape = pipeline.latent_shape(config.seconds)
    info = backbone.info
    seconds = config.seconds or info["crop_frames"] * info["hop_length"] / info["sample_rate"]
    generator = torch.Generator().manual_seed(config.seed)
    waves: list[np.ndarray] = []
    for start in range(0, len(captions), config.batch_size):
        batch = captions[start: start + config.batch_size]
        latents = torch.randn((len(batch), *shape), generator=generator)  # drawn as render draws them
        audio = text_pipeline(prompt=batch, audio_length_in_s=seconds, num_inference_steps=config.steps,
                              guidance_scale=config.guidance_scale, latents=latents,
                              max_new_tokens=backbone.max_new_tokens, output_type="pt").audios
        for wave in limit_peaks(audio.float().cpu().numpy()):
            waves.append(wave[: round(seconds * pipeline.sample_rate)].astype(np.float32))
    return waves
