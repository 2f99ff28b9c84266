"""The model part's 10.24 s generation and the stand-in images its image encoders embed."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from art2mus.rehearsal.checkpoints import quiet_libraries
from art2mus.rehearsal.model_part_measures import (
    GUIDANCE,
    K_TOKENS,
    LATENT_SHAPE,
    SAMPLE_RATE,
    SECONDS,
    SEED,
    count,
    sync,
)
from art2mus.rehearsal.model_part_training import Trainer

if TYPE_CHECKING:
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL


# ---- generation ------------------------------------------------------------------------------------
@torch.no_grad()
def generate(trainer: Trainer, aligner: torch.nn.Module, vae: AutoencoderKL, vocoder: torch.nn.Module,
             steps: int) -> dict[str, Any]:
    """One 10.24 s clip: DPM-Solver++ with guidance (null LOA zeros + conditional), VAE decode, HiFi-GAN."""
    from diffusers import DPMSolverMultistepScheduler

    device, unet = trainer.device, trainer.unet
    with quiet_libraries():
        scheduler = DPMSolverMultistepScheduler.from_config(trainer.scheduler.config, algorithm_type="dpmsolver++")
    scheduler.set_timesteps(steps, device=device)
    clip = torch.randn(1, trainer.clip_dim, generator=torch.Generator().manual_seed(SEED + 7)).to(device)
    start = time.perf_counter()
    loa = trainer.language_of_audio(aligner(clip).view(1, K_TOKENS, trainer.lm_dim))
    sync(device)
    gpt2_seconds = time.perf_counter() - start
    conditioning = torch.cat([torch.zeros_like(loa), loa])
    t5 = trainer.t5.expand(2, -1, -1)
    latents = torch.randn(1, *LATENT_SHAPE, generator=torch.Generator().manual_seed(SEED + 8)).to(device)
    latents = latents * scheduler.init_noise_sigma
    step_seconds = []
    for timestep in scheduler.timesteps:
        start = time.perf_counter()
        model_input = scheduler.scale_model_input(torch.cat([latents] * 2), timestep)
        noise = unet(model_input, timestep, encoder_hidden_states=conditioning, encoder_hidden_states_1=t5,
                     encoder_attention_mask_1=None).sample
        uncond, cond = noise.chunk(2)
        latents = scheduler.step(uncond + GUIDANCE * (cond - uncond), timestep, latents).prev_sample
        sync(device)
        step_seconds.append(time.perf_counter() - start)
    start = time.perf_counter()
    mel = vae.decode(latents / vae.config["scaling_factor"]).sample
    sync(device)
    vae_seconds = time.perf_counter() - start
    start = time.perf_counter()
    waveform = vocoder(mel.squeeze(1))
    sync(device)
    vocoder_seconds = time.perf_counter() - start
    per_step = float(np.mean(step_seconds))
    expected = int(round(SECONDS * SAMPLE_RATE))

    def real_time_factor(n: int) -> float:
        return round((gpt2_seconds + n * per_step + vae_seconds + vocoder_seconds) / SECONDS, 3)

    return {
        "scheduler": "DPMSolverMultistepScheduler(dpmsolver++)", "guidance_scale": GUIDANCE, "unet_batch": 2,
        "steps_measured": steps, "unet_step_seconds": [round(s, 3) for s in step_seconds],
        "seconds_per_unet_step": round(per_step, 3), "gpt2_seconds": round(gpt2_seconds, 3),
        "vae_decode_seconds": round(vae_seconds, 3), "vocoder_seconds": round(vocoder_seconds, 3),
        "mel_shape": list(mel.shape), "generated_samples": int(waveform.shape[-1]),
        "expected_samples": expected, "extra_samples": int(waveform.shape[-1]) - expected,
        "trimmed_samples": min(int(waveform.shape[-1]), expected),
        "waveform_finite": bool(torch.isfinite(waveform).all()),
        "real_time_factor_measured": real_time_factor(steps),
        "real_time_factor_extrapolated": {
            "note": "extrapolated from the measured seconds per UNet step (+ GPT-2, VAE decode, HiFi-GAN once)",
            "dpmsolver_25_steps": real_time_factor(25), "ddim_200_steps": real_time_factor(200)},
        "seconds_per_clip_extrapolated": {"dpmsolver_25_steps": round(real_time_factor(25) * SECONDS, 1),
                                          "ddim_200_steps": round(real_time_factor(200) * SECONDS, 1)},
    }


# ---- image encoders --------------------------------------------------------------------------------
def images(size: int, device: torch.device, count_: int = 2) -> torch.Tensor:
    """Two normalised 224x224 stand-in images (random pixels)."""
    return torch.randn(count_, 3, size, size, generator=torch.Generator().manual_seed(SEED + 9)).to(device)


def imagebind_vision_parameters(model: torch.nn.Module) -> int:
    total = 0
    for family in ("modality_preprocessors", "modality_trunks", "modality_heads", "modality_postprocessors"):
        modules = getattr(model, family, None)
        if modules is not None and "vision" in modules:
            total += count(modules["vision"])
    return total
