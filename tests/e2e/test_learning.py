"""It must learn: on the test split (artists never seen in training), the trained aligner steers the
prior's music towards its own artwork, and what it generates carries the artwork's planted factors.

The figures come from the pipeline's own `evaluate` stage (reports/evaluate/metrics.json), run once
by the shared fixture; they are printed as part of the test output.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("pipeline")]  # SHARED_GROUP: first, to start the build
CHANCE = 1 / 8


@pytest.fixture(scope="session")
def metrics(pipeline_repo: Path) -> dict:
    figures = json.loads((pipeline_repo / "reports/evaluate/metrics.json").read_text())
    print(json.dumps({"correspondence": figures["correspondence"],
                      "planted": {name: found.get("planted") for name, found in figures["generation"].items()}},
                     indent=2))
    return figures


def test_the_test_split_is_large_and_unseen(pipeline_repo: Path, metrics: dict) -> None:
    splits = pd.read_parquet(pipeline_repo / "data/processed/splits.parquet")
    test = splits[splits["split"] == "test"]
    assert metrics["split"] == "test" and metrics["items"] == len(test) >= 64
    assert metrics["k"] == 8
    assert not set(test["artist"]) & set(splits.loc[splits["split"] == "train", "artist"])


def test_the_oracle_shows_the_prior_listens(metrics: dict) -> None:
    oracle = metrics["correspondence"]["oracle"]
    assert oracle["retrieval_top1"]["low"] > CHANCE and oracle["gap"]["low"] > 0


def test_the_trained_aligner_retrieves_its_artwork(metrics: dict) -> None:
    trained, oracle = metrics["correspondence"]["trained"], metrics["correspondence"]["oracle"]
    top1 = trained["retrieval_top1"]
    assert top1["value"] >= 0.5 and top1["low"] > CHANCE
    assert top1["value"] >= 0.75 * oracle["retrieval_top1"]["value"]  # 0.79-0.88 over three seeds (README)
    assert trained["gap"]["low"] > 0  # matched-vs-mismatched gap, 95 % CI above zero


def test_the_baselines_stay_at_chance(metrics: dict) -> None:
    for name in ("mean", "untrained"):  # one conditioning for every image; random aligners (pooled)
        top1 = metrics["correspondence"][name]["retrieval_top1"]
        assert top1["low"] <= CHANCE <= top1["high"], name


def test_generated_music_carries_the_planted_factors(metrics: dict) -> None:
    """An estimator fitted on real tracks (not on the model) reads the artwork's levels from the music."""
    trained = metrics["generation"]["trained"]["planted"]
    assert set(trained) == {"register", "notes_per_second", "timbre"}
    # Every factor audible: each 95 % CI above chance, and each accuracy at least chance + 0.15. Three aligner
    # seeds of this fixture's budget (800 prior, 900 aligner steps) read 0.62-0.69 for notes and timbre (CI lows
    # 0.52-0.58, chance ~0.35); 600 aligner steps read timbre 0.47 on one of them (chance + 0.14), which fails here.
    for factor, score in trained.items():
        assert score["accuracy"]["low"] > score["chance"], (factor, trained)
        assert score["accuracy"]["value"] >= score["chance"] + 0.15, (factor, trained)
    for score in trained.values():
        assert score["reference_accuracy"] >= 0.8  # the estimator itself reads real music reliably
    # One conditioning for every image: the music cannot follow the artwork.
    for factor, score in metrics["generation"]["mean"]["planted"].items():
        assert score["accuracy"]["low"] <= score["chance"] + 0.05, factor


def test_the_oracle_and_the_floor_bound_what_the_model_can_score(metrics: dict) -> None:
    """The oracle row (clips from the prior's own conditioning of each track) and the floor (the references
    through codec and vocoder) are scored like the model: the ceiling of what the prior renders, and the
    FAD a perfect model would score."""
    generation = metrics["generation"]
    floor, oracle, trained = generation["references_vocoded"], generation["oracle"], generation["trained"]
    for factor, score in floor["planted"].items():
        assert score["accuracy"]["value"] >= 0.8, factor  # the vocoded references carry every factor
    for factor, score in oracle["planted"].items():  # the prior renders every factor
        assert score["accuracy"]["low"] > score["chance"], (factor, oracle["planted"])
    # The 800-step prior's oracle comes near the floor (CIs 11.6-21.6 and 21.1-38.7 touch): the floor's
    # value sits below both generated sets' CIs.
    assert floor["fad_spectral"]["value"] < oracle["fad_spectral"]["low"]
    assert floor["fad_spectral"]["value"] < trained["fad_spectral"]["low"]
    # The model's music is nearer the references than one mean conditioning's (whose FAD moves with the model:
    # 72.7 [61.8, 85.3] in `make run`, 43.8 [37.7, 50.5] on one CI machine), and apart from random aligners'.
    mean, untrained = generation["mean"]["fad_spectral"], generation["untrained"]["fad_spectral"]
    assert trained["fad_spectral"]["value"] < mean["low"]
    assert trained["fad_spectral"]["high"] < untrained["low"]


def spectral_flatness(wave: np.ndarray) -> float:
    """Geometric over arithmetic mean of the power spectrum: ~1 for white noise, small for tones."""
    power = np.abs(np.fft.rfft(wave)) ** 2 + 1e-12
    return float(np.exp(np.mean(np.log(power))) / np.mean(power))


def test_generated_music_is_within_sane_bounds(pipeline_repo: Path, metrics: dict) -> None:
    trained = metrics["generation"]["trained"]
    assert trained["rms_min"] > 1e-2 and trained["rms_mean"] < 0.5  # audible, and not a wall of sound
    assert trained["peak_max"] <= 0.99 + 1e-6 and trained["clipped_fraction"] == 0  # never clips
    wavs = sorted((pipeline_repo / "reports/evaluate/generated").glob("*.wav"))
    assert len(wavs) == metrics["items"]
    for path in wavs[:8]:
        wave, rate = sf.read(path, dtype="float32")
        assert rate == 16000 and len(wave) == round(2.56 * 16000)
        assert spectral_flatness(wave) < 0.1  # tonal, not noise (white noise is ~0.56 here)


def test_the_report_is_written(pipeline_repo: Path) -> None:
    report = pipeline_repo / "reports/evaluate/report/index.html"
    assert report.is_file() and "trained" in report.read_text()
