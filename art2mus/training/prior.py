"""Train the tiny prior the way AudioLDM2 was trained: the UNet conditioned on LOA features computed
from the target audio itself (a tiny audio encoder plays AudioMAE's part, through GPT-2), with
conditioning dropout to the null LOA, so its cross-attention learns to listen. Train split only.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from art2mus.config import AudioParams, BackboneParams, PriorParams
from art2mus.models.audio import log_mel, mel_transform, model_crop, read_mono
from art2mus.models.backbone import Backbone
from art2mus.models.tiny import build_tiny_backbone, tiny_parts
from art2mus.training.diffusion import diffusion_target, sample_noise_and_timesteps

logger = logging.getLogger(__name__)


@dataclass
class PriorResult:
    backbone: Backbone
    losses: list[float]
    seconds: float


def track_waves(paths: list[str], audio: AudioParams, quiet: bool = False) -> list[np.ndarray]:
    """Whole tracks as mono float32 at the model's sample rate."""
    return [read_mono(path, audio.sample_rate)
            for path in tqdm(paths, desc="prior: audio", unit="track", disable=quiet, leave=False)]


def sample_crops(waves: list[np.ndarray], audio: AudioParams, batch: int, random_crops: bool,
                 generator: torch.Generator, transform: torch.nn.Module) -> torch.Tensor:
    """[batch, frames, n_mels] log-mels of model crops: random tracks at random (or the fixed) offsets."""
    picks = torch.randint(len(waves), (batch,), generator=generator).tolist()
    crops = []
    for index in picks:
        wave = waves[index]
        offset = None
        if random_crops:
            start = int(torch.randint(max(1, len(wave) - audio.crop_samples + 1), (1,), generator=generator))
            offset = start / audio.sample_rate
        crops.append(model_crop(wave, audio, offset))
    return log_mel(torch.from_numpy(np.stack(crops)), audio, transform)


def cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    """LR multiplier: linear warm-up, then cosine decay to 10 %."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train_prior(
    track_paths: list[str],
    audio: AudioParams,
    backbone_params: BackboneParams,
    params: PriorParams,
    log_loss: Callable[[int, float], None] | None = None,
    quiet: bool = False,
) -> PriorResult:
    """Train a tiny backbone on the given tracks (the train split's); returns it frozen."""
    torch.set_num_threads(params.threads)
    started = time.perf_counter()
    waves = track_waves(track_paths, audio, quiet)
    transform = mel_transform(audio)
    backbone = build_tiny_backbone(backbone_params, audio, seed=params.seed)
    # The codec's statistics come from the fixed crops: exactly what `latents` will encode.
    codec, _, audio_encoder = tiny_parts(backbone)
    codec.fit(log_mel(torch.from_numpy(np.stack([model_crop(w, audio) for w in waves])), audio, transform))
    trained = [backbone.unet, backbone.language_model, audio_encoder]
    for module in trained:
        module.train()
    parameters = [p for module in trained for p in module.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=params.lr, weight_decay=params.weight_decay)
    warmup = max(1, params.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_with_warmup(s, params.steps, warmup))
    generator = torch.Generator().manual_seed(params.seed)
    null_loa = backbone.null_loa
    losses: list[float] = []
    bar = tqdm(range(params.steps), desc="prior", unit="step", disable=quiet, leave=False)
    for step in bar:
        with torch.no_grad():
            latents = backbone.codec.encode(
                sample_crops(waves, audio, params.batch_size, params.random_crops, generator, transform))
        noise, timesteps = sample_noise_and_timesteps(latents, backbone.scheduler, generator)
        noisy = backbone.scheduler.add_noise(latents, noise, timesteps)
        loa = backbone.language_of_audio(audio_encoder(latents))
        dropped = torch.rand(latents.shape[0], generator=generator) < params.cond_dropout
        loa = torch.where(dropped[:, None, None], null_loa.expand_as(loa), loa)
        prediction = backbone.predict(noisy, timesteps, loa)
        loss = torch.nn.functional.mse_loss(prediction, diffusion_target(backbone.scheduler, latents, noise, timesteps))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.detach().item())
        if log_loss is not None and (step % 10 == 0 or step == params.steps - 1):
            log_loss(step, losses[-1])
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    seconds = time.perf_counter() - started
    logger.info("prior: %d steps in %.0f s, loss %.4f -> %.4f", params.steps, seconds,
                float(np.mean(losses[:10])), float(np.mean(losses[-10:])))
    return PriorResult(backbone=backbone.eval(), losses=losses, seconds=seconds)
