"""The tiny prior's training crops: each track's spectrogram computed once, each crop exactly model_crop's log-mel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from art2mus.config import AudioParams
from art2mus.models.audio import log_mel, mel_transform, model_crop
from art2mus.training.prior import TrackMels, sample_crops
from tests.tiny_model import note_track

AUDIO = AudioParams()  # 16 kHz, hop 160, the tiny profile's 2.56 s crop


def model_log_mel(wave: np.ndarray, start: int, transform: torch.nn.Module, audio: AudioParams = AUDIO) -> torch.Tensor:
    offset = start * audio.hop_length / audio.sample_rate
    return log_mel(torch.from_numpy(model_crop(wave, audio, offset))[None], audio, transform)[0]


def assert_same_log_mel(crop: torch.Tensor, exact: torch.Tensor) -> None:
    # Near the log floor a float's last bits show (the mean subtracted from the DC bins); elsewhere ~1e-5.
    torch.testing.assert_close(crop, exact, atol=5e-3, rtol=0)
    assert float((crop - exact).abs().mean()) < 1e-4


@pytest.mark.parametrize("offset", [0.0, 0.05])
def test_a_crop_on_the_hop_grid_is_model_crops_log_mel(offset: float) -> None:
    transform = mel_transform(AUDIO)
    wave = note_track(4.0, seed=0, offset=offset)
    tracks = TrackMels([wave], AUDIO, transform)
    last = (len(wave) - AUDIO.crop_samples) // AUDIO.hop_length
    assert tracks.offsets(0) == last + 1
    starts = [0, 37, last]
    sliced = tracks.crops([(0, start) for start in starts])
    for crop, start in zip(sliced, starts):
        assert_same_log_mel(crop, model_log_mel(wave, start, transform))


def test_a_track_shorter_than_the_crop_is_padded_like_model_crop() -> None:
    transform = mel_transform(AUDIO)
    wave = note_track(1.5, seed=1)
    tracks = TrackMels([wave], AUDIO, transform)
    assert tracks.offsets(0) == 1
    assert_same_log_mel(tracks.crops([(0, 0)])[0], model_log_mel(wave, 0, transform))


@pytest.mark.parametrize("crop_seconds", [0.064, 0.08, 0.12])  # 6, 8 and 12 frames: 4 at each end reach past it
def test_a_crop_of_few_frames_is_model_crops_log_mel_too(crop_seconds: float) -> None:
    audio = AudioParams(crop_seconds=crop_seconds)
    transform = mel_transform(audio)
    wave = note_track(1.0, seed=2, offset=0.05)
    tracks = TrackMels([wave], audio, transform)
    for start in (0, 11, tracks.offsets(0) - 1):
        crop = tracks.crops([(0, start)])[0]
        assert crop.shape == (round(crop_seconds * audio.sample_rate) // audio.hop_length, audio.n_mels)
        assert_same_log_mel(crop, model_log_mel(wave, start, transform, audio))


def test_random_crops_are_seeded_and_the_fixed_crop_is_the_models() -> None:
    transform = mel_transform(AUDIO)
    waves = [note_track(4.0, seed) for seed in range(3)]
    tracks = TrackMels(waves, AUDIO, transform)
    first = sample_crops(tracks, AUDIO, 8, True, torch.Generator().manual_seed(0))
    assert first.shape == (8, AUDIO.crop_samples // AUDIO.hop_length, AUDIO.n_mels)
    assert torch.equal(first, sample_crops(tracks, AUDIO, 8, True, torch.Generator().manual_seed(0)))
    assert not torch.equal(first, sample_crops(tracks, AUDIO, 8, True, torch.Generator().manual_seed(1)))
    fixed = sample_crops(tracks, AUDIO, 4, False, torch.Generator().manual_seed(0))
    exact = [log_mel(torch.from_numpy(model_crop(wave, AUDIO))[None], AUDIO, transform)[0] for wave in waves]
    for crop in fixed:
        assert min(float((crop - wanted).abs().max()) for wanted in exact) < 5e-3
