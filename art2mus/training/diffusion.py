"""What every diffusion loss here shares: noise and timestep draws, the target, min-SNR weights."""

from __future__ import annotations

import torch


def sample_noise_and_timesteps(
    latents: torch.Tensor, scheduler, generator: torch.Generator, t_range: tuple[int, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian noise like `latents` and uniform integer timesteps, from `generator` (reproducible)."""
    low, high = t_range or (0, scheduler.config.num_train_timesteps)
    noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype)
    timesteps = torch.randint(low, high, (latents.shape[0],), generator=generator)
    return noise.to(latents.device), timesteps.to(latents.device)


def diffusion_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet must predict, read from the scheduler's prediction_type (never assumed ε)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    if kind == "sample":
        return latents
    raise ValueError(f"unsupported prediction_type {kind!r}")


def min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ loss weights (Hang et al. 2023) for the scheduler's prediction type."""
    alphas = scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    snr = alphas / (1 - alphas)
    clipped = torch.minimum(snr, torch.full_like(snr, gamma))
    if scheduler.config.prediction_type == "v_prediction":
        return clipped / (snr + 1)
    if scheduler.config.prediction_type == "epsilon":
        return clipped / snr
    return clipped


def per_sample_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per batch item: [B, ...] -> [B]."""
    return (prediction.float() - target.float()).pow(2).flatten(1).mean(1)
