"""Training the tiny prior: the moving average of its weights, when asked for, is the prior it returns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from art2mus.config import AudioParams, BackboneParams, PriorParams
from art2mus.training.prior import train_prior
from tests.tiny_model import note_track

AUDIO = AudioParams()


def trained_weights(paths: list[str], ema_decay: float | None) -> tuple[list[float], dict[str, torch.Tensor]]:
    params = PriorParams(steps=4, batch_size=4, threads=1, ema_decay=ema_decay)
    result = train_prior(paths, AUDIO, BackboneParams(), params, quiet=True)
    return result.losses, {name: value.clone() for name, value in result.backbone.unet.state_dict().items()}


def test_the_ema_is_the_prior_and_leaves_the_training_path_alone(tmp_path: Path) -> None:
    paths = []
    for seed in range(4):
        path = tmp_path / f"{seed}.wav"
        sf.write(path, note_track(4.0, seed), AUDIO.sample_rate)
        paths.append(str(path))
    losses, raw = trained_weights(paths, None)
    ema_losses, averaged = trained_weights(paths, 0.9)
    last_losses, last = trained_weights(paths, 1e-9)  # an average over one step: the last weights
    assert losses == ema_losses == last_losses  # the average never feeds back into training
    assert all(torch.allclose(last[name], raw[name], atol=1e-6) for name in raw)
    moved = [name for name in raw if not torch.allclose(averaged[name], raw[name], atol=1e-6)]
    assert len(moved) > len(raw) // 2
    assert np.isfinite(losses).all()
