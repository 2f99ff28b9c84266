"""Does the generated music carry its artwork's planted factors? An estimator independent of the model.

Only the embedded sample knows its factors (`factors.csv`: every track's register, notes per second
and timbre, planted from its artwork's palette, texture and composition). Per music factor, a
linear classifier on hand-made audio features (log-mel band means and spreads, and the
autocorrelation of the onset envelope, which measures note rate) is fitted on real tracks and then
names the level of each generated clip. The real tracks are first rendered through the same codec
round trip and vocoder that generated audio goes through, so that what the classifier keys on is
the music, not the vocoder's artefacts. Nothing of the prior's UNet, GPT-2 or the aligner is used.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from art2mus.config import AudioParams
from art2mus.evaluation.correspondence import Interval, bootstrap_interval
from art2mus.models.audio import log_mel, mel_transform, model_crop, read_mono
from art2mus.models.backbone import Backbone

if TYPE_CHECKING:  # scikit-learn is imported when an estimator is fitted
    from sklearn.pipeline import Pipeline

MUSIC_FACTORS = ("register", "notes_per_second", "timbre")
MAX_ONSET_LAG = 64  # frames (0.64 s at hop 160): covers one note at 2 notes/s and more


@dataclass
class FactorScore:
    """How often the estimator names the level planted in the artwork, against chance."""

    factor: str
    accuracy: Interval
    chance: float  # the accuracy of predictions independent of the targets, with the same marginals
    levels: int
    reference_accuracy: float  # the estimator on held-out real (vocoded) tracks: its own ceiling

    def as_dict(self) -> dict[str, object]:
        return {"factor": self.factor, "accuracy": self.accuracy.as_dict(), "chance": self.chance,
                "levels": self.levels, "reference_accuracy": self.reference_accuracy}


def clip_features(log_mels: torch.Tensor) -> np.ndarray:
    """[B, frames, n_mels] log-mels -> [B, F] features: band means and spreads, onset-envelope autocorrelation."""
    mels = log_mels.double()
    means = mels.mean(dim=1)
    spreads = mels.std(dim=1)
    flux = torch.relu(mels[:, 1:] - mels[:, :-1]).sum(dim=2)  # onset envelope
    flux = flux - flux.mean(dim=1, keepdim=True)
    energy = (flux * flux).sum(dim=1).clamp_min(1e-12)
    lags = range(2, min(MAX_ONSET_LAG, flux.shape[1] - 1))
    autocorrelation = torch.stack([(flux[:, lag:] * flux[:, :-lag]).sum(dim=1) / energy for lag in lags], dim=1)
    return torch.cat([means, spreads, autocorrelation], dim=1).numpy()


VOCODE_BATCH = 16  # clips per codec round trip and vocoder call (160 at once at 10.24 s would not fit)


@torch.no_grad()
def vocoded(waves: list[np.ndarray], backbone: Backbone, audio: AudioParams) -> Iterator[torch.Tensor]:
    """Real clips rendered the way generated ones are (codec round trip, vocoder): [B, samples] per batch."""
    transform = mel_transform(audio)
    for start in range(0, len(waves), VOCODE_BATCH):
        mels = log_mel(torch.from_numpy(np.stack(waves[start: start + VOCODE_BATCH])), audio, transform)
        yield backbone.vocoder(backbone.codec.decode_in_range(backbone.codec.encode(mels.to(backbone.device))))


def vocoded_log_mels(waves: list[np.ndarray], backbone: Backbone, audio: AudioParams) -> torch.Tensor:
    """Real clips rendered the way generated ones are, then analysed again."""
    rendered = [wave for batch in vocoded(waves, backbone, audio) for wave in batch.float().cpu().numpy()]
    return analysed_log_mels(rendered, audio)


def analysed_log_mels(waves: list[np.ndarray], audio: AudioParams) -> torch.Tensor:
    """The model-crop log-mels of clips (peak-normalised, like every clip the estimator sees)."""
    crops = [model_crop(wave, audio, offset_seconds=0.0) for wave in waves]
    return log_mel(torch.from_numpy(np.stack(crops)), audio, mel_transform(audio))


def fit_classifier(features: np.ndarray, labels: np.ndarray, seed: int = 0) -> Pipeline:
    """A standardised multinomial logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000, random_state=seed)).fit(
        features, labels)


def independent_chance(predicted: np.ndarray, targets: np.ndarray) -> float:
    """Expected accuracy if the predictions ignored the targets (same marginals): sum_l p_pred(l) p_target(l)."""
    levels = np.union1d(predicted, targets)
    return float(sum((predicted == level).mean() * (targets == level).mean() for level in levels))


def read_track_crops(paths: list[Path], audio: AudioParams) -> list[np.ndarray]:
    return [model_crop(read_mono(path, audio.sample_rate), audio) for path in paths]


@dataclass
class FactorEstimator:
    """One fitted classifier per music factor, with its accuracy on held-out real (vocoded) tracks."""

    classifiers: dict[str, Pipeline]
    reference_accuracy: dict[str, float]
    levels: dict[str, int]

    def score(self, generated: list[np.ndarray], targets: pd.DataFrame, audio: AudioParams,
              seed: int = 0) -> list[FactorScore]:
        """Accuracy of the estimator's reading of each clip against the levels planted in its artwork."""
        features = clip_features(analysed_log_mels(generated, audio))
        scores = []
        for factor, classifier in self.classifiers.items():
            predicted = classifier.predict(features)
            wanted = targets[factor].astype(str).to_numpy()
            scores.append(FactorScore(factor, bootstrap_interval((predicted == wanted).astype(float), seed=seed),
                                      independent_chance(predicted, wanted), self.levels[factor],
                                      self.reference_accuracy[factor]))
        return scores


def fit_factor_estimator(paths: list[Path], factors: pd.DataFrame, backbone: Backbone, audio: AudioParams,
                         seed: int = 0) -> FactorEstimator:
    """Fit on real tracks (rendered like generated audio); `factors` holds MUSIC_FACTORS, one row per path."""
    features = clip_features(vocoded_log_mels(read_track_crops(paths, audio), backbone, audio))
    held_out = np.random.default_rng(seed).permutation(len(features)) < len(features) // 4
    classifiers, reference_accuracy, levels = {}, {}, {}
    for factor in MUSIC_FACTORS:
        labels = factors[factor].astype(str).to_numpy()
        check = fit_classifier(features[~held_out], labels[~held_out], seed)
        reference_accuracy[factor] = float((check.predict(features[held_out]) == labels[held_out]).mean())
        classifiers[factor] = fit_classifier(features, labels, seed)
        levels[factor] = len(np.unique(labels))
    return FactorEstimator(classifiers, reference_accuracy, levels)
