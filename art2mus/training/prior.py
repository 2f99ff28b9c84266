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
from typing import TYPE_CHECKING

import numpy as np
import torch
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from art2mus.config import AudioParams, BackboneParams, PriorParams
from art2mus.models.audio import (
    LOG_FLOOR,
    NORMALIZED_PEAK,
    crop_frames,
    crop_waveform,
    log_mel,
    mel_transform,
    model_crop,
    normalize_wav,
    read_mono,
)
from art2mus.models.backbone import Backbone
from art2mus.models.tiny import build_tiny_backbone, tiny_parts
from art2mus.training.diffusion import diffusion_target, sample_noise_and_timesteps

if TYPE_CHECKING:
    from torchaudio.transforms import MelSpectrogram

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


class TrackMels:
    """Every track's spectrogram computed once, so that a training crop costs a slice, not an STFT.

    A crop on the hop grid is exactly `log_mel(model_crop(...))`: its inner frames are the whole track's
    (the STFT is centred on each hop); the few frames at each end whose window reaches past the crop,
    where `model_crop`'s log-mel reflects the crop's own edge, are computed from the crop. Its
    normalisation is exact too: the crop's peak is one scale on the magnitude mel, and its mean reaches
    only the bins where the window's own spectrum lives (Hann: 0 and 1), kept complex to subtract it.
    """

    def __init__(self, waves: list[np.ndarray], audio: AudioParams, transform: MelSpectrogram) -> None:
        spectrogram, fb = transform.spectrogram, transform.mel_scale.fb  # torchaudio's MelSpectrogram
        window_dft = torch.fft.rfft(spectrogram.window.double())
        dc_bins = int((window_dft.abs() > 1e-6 * window_dft.abs()[0]).nonzero().max()) + 1
        self.window_dft, self.dc_fb = window_dft[:dc_bins].to(torch.complex64), fb[:dc_bins]
        self.audio, self.transform, self.frames = audio, transform, crop_frames(audio)
        self.edge = math.ceil(spectrogram.n_fft / 2 / audio.hop_length)  # frames reaching past a crop's end
        self.waves = [np.pad(wave, (0, max(0, audio.crop_samples - len(wave)))) for wave in waves]  # as crops are
        self.rest: list[torch.Tensor] = []  # [frames, n_mels]: the mel of the bins a constant does not reach
        self.dc: list[torch.Tensor] = []  # [frames, dc_bins] complex: the bins it does
        for wave in self.waves:
            stft = torch.stft(torch.from_numpy(wave), spectrogram.n_fft, audio.hop_length, spectrogram.win_length,
                              spectrogram.window, center=True, pad_mode="reflect", return_complex=True).T
            self.rest.append(stft[:, dc_bins:].abs() @ fb[dc_bins:])
            self.dc.append(stft[:, :dc_bins].contiguous())

    def offsets(self, index: int) -> int:
        """How many hop-grid offsets a crop of track `index` can start at."""
        return (len(self.waves[index]) - self.audio.crop_samples) // self.audio.hop_length + 1

    def crops(self, picks: list[tuple[int, int]]) -> torch.Tensor:
        """[len(picks), frames, n_mels]: `log_mel(model_crop(...))` of each (track, hop offset)."""
        audio, hop, edge, frames = self.audio, self.audio.hop_length, self.edge, self.frames
        whole = frames <= 2 * edge  # every frame's window reaches past the crop: nothing to slice
        inner, clips = [], []
        for index, start in picks:
            raw = crop_waveform(self.waves[index], audio, start * hop / audio.sample_rate)
            clips.append(normalize_wav(raw))
            if whole:
                continue
            mean = float(raw.mean())
            scale = NORMALIZED_PEAK / (float(np.abs(raw - mean).max()) + 1e-8)
            window = slice(start, start + frames)
            dc = (self.dc[index][window] - mean * self.window_dft).abs() @ self.dc_fb
            inner.append((self.rest[index][window] + dc) * scale)
        clip = torch.from_numpy(np.stack(clips))
        if whole:
            return log_mel(clip, audio, self.transform)
        mels = torch.log(torch.clamp(torch.stack(inner), min=LOG_FLOOR))
        mels[:, :edge] = log_mel(clip[:, : 2 * edge * hop], audio, self.transform)[:, :edge]
        mels[:, frames - edge:] = log_mel(clip[:, (frames - 2 * edge) * hop:], audio, self.transform)[:, -edge:]
        return mels


def sample_crops(tracks: TrackMels, audio: AudioParams, batch: int, random_crops: bool,
                 generator: torch.Generator) -> torch.Tensor:
    """[batch, frames, n_mels] log-mels of model crops: random tracks at random (or the fixed) hop offsets."""
    picks = torch.randint(len(tracks.waves), (batch,), generator=generator).tolist()
    fixed = round(audio.crop_offset_seconds * audio.sample_rate / audio.hop_length)
    starts = [int(torch.randint(tracks.offsets(index), (1,), generator=generator)) if random_crops
              else min(fixed, tracks.offsets(index) - 1) for index in picks]
    return tracks.crops(list(zip(picks, starts)))


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
    tracks = TrackMels(waves, audio, transform)
    trained = [backbone.unet, backbone.language_model, audio_encoder]
    for module in trained:
        module.train()
    parameters = [p for module in trained for p in module.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=params.lr, weight_decay=params.weight_decay)
    ema = None if params.ema_decay is None else EMAModel(parameters, decay=params.ema_decay)
    warmup = max(1, params.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_with_warmup(s, params.steps, warmup))
    generator = torch.Generator().manual_seed(params.seed)
    null_loa = backbone.null_loa
    losses: list[float] = []
    bar = tqdm(range(params.steps), desc="prior", unit="step", disable=quiet, leave=False)
    for step in bar:
        with torch.no_grad():
            latents = backbone.codec.encode(
                sample_crops(tracks, audio, params.batch_size, params.random_crops, generator))
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
        if ema is not None:
            ema.step(parameters)
        losses.append(loss.detach().item())
        if log_loss is not None and (step % 10 == 0 or step == params.steps - 1):
            log_loss(step, losses[-1])
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    if ema is not None:
        ema.copy_to(parameters)  # the averaged weights are the prior
    seconds = time.perf_counter() - started
    logger.info("prior: %d steps in %.0f s, loss %.4f -> %.4f", params.steps, seconds,
                float(np.mean(losses[:10])), float(np.mean(losses[-10:])))
    return PriorResult(backbone=backbone.eval(), losses=losses, seconds=seconds)
