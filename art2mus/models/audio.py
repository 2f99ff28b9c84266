"""Audio front-end (AudioLDM2's log-mel), the tiny profile's latent codec, and its vocoder.

The tiny profile needs no pretrained weights anywhere between latents and waveform:
- `MelCodec` is a fixed, exactly invertible transform: standardise the log-mel with statistics of
  the train split, then fold (time x mel) blocks into DCT channels (256 x 64 -> 32 x 32 x 16), one scale per channel.
- `GriffinLimVocoder` renders a log-mel to audio with torchaudio's InverseMelScale + GriffinLim.
The real profile uses AudioLDM2's own VAE and HiFi-GAN instead (see backbone.py).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from art2mus.config import AudioParams
from art2mus.errors import Art2MusError
from art2mus.models.backbone import LatentCodec

if TYPE_CHECKING:
    from torchaudio.transforms import MelSpectrogram

LOG_FLOOR = 1e-5  # AudioLDM's dynamic-range compression: log(clamp(mel, 1e-5))
F_MAX = 8000.0


class AudioDecodeError(Art2MusError):
    """An audio file could not be read or is too short for the crop."""


def mel_transform(audio: AudioParams) -> MelSpectrogram:
    """Magnitude mel spectrogram as AudioLDM computes it (Slaney scale and norm, fmax 8 kHz)."""
    import torchaudio

    return torchaudio.transforms.MelSpectrogram(
        sample_rate=audio.sample_rate, n_fft=audio.n_fft, win_length=audio.n_fft, hop_length=audio.hop_length,
        f_min=0.0, f_max=F_MAX, n_mels=audio.n_mels, power=1.0, norm="slaney", mel_scale="slaney", center=True,
    )


def crop_frames(audio: AudioParams) -> int:
    """Mel frames in the model's crop (2.56 s at hop 160 -> 256)."""
    return audio.crop_samples // audio.hop_length


def log_mel(waveforms: torch.Tensor, audio: AudioParams, transform: torch.nn.Module | None = None) -> torch.Tensor:
    """[B, samples] waveforms -> [B, frames, n_mels] log-mel (frames = samples // hop)."""
    transform = transform or mel_transform(audio)
    mel = transform(waveforms.float())  # [B, n_mels, samples // hop + 1]
    frames = waveforms.shape[-1] // audio.hop_length
    return torch.log(torch.clamp(mel[..., :frames], min=LOG_FLOOR)).transpose(1, 2)


def read_mono(path: str | Path, sample_rate: int) -> np.ndarray:
    """A whole audio file as mono float32 at `sample_rate`."""
    import soundfile as sf

    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as error:
        raise AudioDecodeError(f"{path}: cannot decode audio: {error}") from None
    mono = data.mean(axis=1)
    if rate != sample_rate:
        import torchaudio

        mono = torchaudio.functional.resample(torch.from_numpy(mono), rate, sample_rate).numpy()
    return mono


def crop_waveform(wave: np.ndarray, audio: AudioParams, offset_seconds: float | None = None) -> np.ndarray:
    """The model's crop: `crop_seconds` from the offset; short tracks are zero-padded at the end."""
    offset = round((audio.crop_offset_seconds if offset_seconds is None else offset_seconds) * audio.sample_rate)
    crop = wave[offset: offset + audio.crop_samples]
    if len(crop) < audio.crop_samples:
        crop = np.pad(crop, (0, audio.crop_samples - len(crop)))
    return crop.astype(np.float32)


NORMALIZED_PEAK = 0.5  # AudioLDM2's normalize_wav peak


def normalize_wav(wave: np.ndarray, peak: float = NORMALIZED_PEAK) -> np.ndarray:
    """AudioLDM2's `normalize_wav`: the mean removed, then peak-normalised to `peak` (0.5)."""
    centred = wave - wave.mean() if len(wave) else wave
    return (centred / (np.abs(centred).max(initial=0.0) + 1e-8) * peak).astype(np.float32)


CROP_VERSION = 3  # caches of anything computed from model_crop key on this: bump when it changes


def model_crop(wave: np.ndarray, audio: AudioParams, offset_seconds: float | None = None) -> np.ndarray:
    """The clip the model sees, wherever it is computed (prior, latents, features, evaluation):
    `crop_seconds` of the mono waveform from the offset, zero-padded at the end, then AudioLDM2's
    `normalize_wav` (mean removed, peak 0.5), as the prior's training audio was.

    Normalising the crop (not the whole track) means a crop depends only on the samples up to its
    end, so a reader may decode just that prefix.
    """
    return normalize_wav(crop_waveform(wave, audio, offset_seconds))


def dct_matrix(n: int) -> torch.Tensor:
    """Orthonormal DCT-II matrix: rows are basis vectors, so its transpose is its inverse."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    matrix = torch.cos(math.pi / n * (i + 0.5) * k) * math.sqrt(2.0 / n)
    matrix[0] /= math.sqrt(2.0)
    return matrix.float()


# LatentCodec before ConfigMixin: ModelMixin's __getattr__ defers to the next class, which must be Module's.
class MelCodec(ModelMixin, LatentCodec, ConfigMixin):
    """Tiny-profile latent: an orthonormal block DCT of the log-mel; `decode` inverts it exactly.

    The log-mel (minus its per-bin train mean) is cut into (fold_time x fold_mel) blocks; each
    block's DCT coefficients become the channels of one latent position (256 x 64 -> 32 x 32 x 16
    with 8 x 4 blocks). Each coefficient channel is divided by its own train-split std, so every
    channel has unit variance, as a VAE's scaled latents do: with one global scale most detail
    channels were ~0.01, and epsilon-prediction then spent the tiny UNet on copying noise through
    near-empty channels instead of learning the music (and the conditioning).
    """

    config_name = "config.json"  # type: ignore[assignment]  # diffusers types ConfigMixin.config_name as None

    @register_to_config
    def __init__(self, n_mels: int = 64, frames: int = 256, fold_time: int = 16, fold_mel: int = 4) -> None:
        super().__init__()
        if frames % fold_time or n_mels % fold_mel:
            raise ValueError(f"frames {frames} / n_mels {n_mels} must divide by the fold ({fold_time}, {fold_mel})")
        self.register_buffer("mean", torch.zeros(n_mels))
        # Per-bin range of the train log-mels: what sampling may not leave (see `decode_in_range`).
        self.register_buffer("low", torch.full((n_mels,), math.log(LOG_FLOOR)))
        self.register_buffer("high", torch.full((n_mels,), 5.0))
        self.register_buffer("scale", torch.ones(fold_time * fold_mel))  # per coefficient channel
        self.register_buffer("dct_time", dct_matrix(fold_time))
        self.register_buffer("dct_mel", dct_matrix(fold_mel))

    @property
    def latent_channels(self) -> int:
        return self.config["fold_time"] * self.config["fold_mel"]

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        c = self.config
        return self.latent_channels, c["frames"] // c["fold_time"], c["n_mels"] // c["fold_mel"]

    def fit(self, mels: torch.Tensor) -> None:
        """Per-bin mean and per-channel scales from [N, frames, n_mels] log-mels (the train split's)."""
        bins = mels.reshape(-1, mels.shape[-1])
        self.mean.copy_(bins.double().mean(0).float())
        self.low.copy_(bins.min(0).values)
        self.high.copy_(bins.max(0).values)
        self.scale.fill_(1.0)
        coefficients = self.encode(mels).double()
        self.scale.copy_(coefficients.transpose(0, 1).flatten(1).std(dim=1).clamp_min(1e-3).float())

    def encode_distribution(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of the latent posterior: the block DCT is deterministic, so std is zero."""
        latents = self.encode(mel)
        return latents, torch.zeros_like(latents)

    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        """[B, frames, n_mels] log-mel -> [B, C, frames/ft, n_mels/fm] latent."""
        c = self.config
        b, t, f = mel.shape
        blocks = (mel - self.mean).reshape(b, t // c["fold_time"], c["fold_time"], f // c["fold_mel"], c["fold_mel"])
        coefficients = torch.einsum("ui,bhiwj,vj->bhwuv", self.dct_time, blocks, self.dct_mel)
        latents = coefficients.reshape(b, t // c["fold_time"], f // c["fold_mel"], self.latent_channels)
        return latents.permute(0, 3, 1, 2) / self.scale[:, None, None]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Exact inverse of `encode`."""
        c = self.config
        b, _, h, w = latents.shape
        coefficients = (latents * self.scale[:, None, None]).permute(0, 2, 3, 1).reshape(b, h, w, c["fold_time"], c["fold_mel"])
        blocks = torch.einsum("ui,bhwuv,vj->bhiwj", self.dct_time, coefficients, self.dct_mel)
        return blocks.reshape(b, h * c["fold_time"], w * c["fold_mel"]) + self.mean

    def decode_in_range(self, latents: torch.Tensor) -> torch.Tensor:
        """`decode`, clamped to each bin's train range: a sampled latent that overshoots (a tiny prior
        does, now and then) becomes the loudest mel the prior ever saw, not a burst Griffin-Lim
        turns into a peak of tens."""
        return torch.maximum(torch.minimum(self.decode(latents), self.high), self.low)


class GriffinLimVocoder(ModelMixin, ConfigMixin):
    """Log-mel -> waveform without learned weights: InverseMelScale then Griffin-Lim."""

    config_name = "config.json"  # type: ignore[assignment]  # diffusers types ConfigMixin.config_name as None

    @register_to_config
    def __init__(self, sample_rate: int = 16000, n_fft: int = 1024, hop_length: int = 160, n_mels: int = 64,
                 n_iter: int = 32) -> None:
        super().__init__()
        import torchaudio

        self.inverse_mel = torchaudio.transforms.InverseMelScale(
            n_stft=n_fft // 2 + 1, n_mels=n_mels, sample_rate=sample_rate, f_min=0.0, f_max=F_MAX,
            norm="slaney", mel_scale="slaney",
        )
        self.griffin_lim = torchaudio.transforms.GriffinLim(
            n_fft=n_fft, win_length=n_fft, hop_length=hop_length, power=1.0, n_iter=n_iter, rand_init=False,
        )

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        """[B, frames, n_mels] -> [B, frames * hop] waveform."""
        magnitude = torch.exp(log_mel.float()).transpose(1, 2)  # [B, n_mels, frames]
        linear = self.inverse_mel(magnitude).clamp_min(0.0)
        wave = self.griffin_lim(linear)
        length = log_mel.shape[1] * self.config["hop_length"]  # Griffin-Lim gives (frames - 1) * hop
        return torch.nn.functional.pad(wave, (0, max(0, length - wave.shape[-1])))[..., :length]
