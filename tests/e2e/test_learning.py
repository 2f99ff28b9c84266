"""It must learn: on the test split (artists never seen in training), the trained aligner steers
the prior's music towards its own artwork, and generation stays within sane bounds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from art2mus.config import load_params
from art2mus.data.latents import load_latents
from art2mus.evaluation.correspondence import CorrespondenceResult, compare_conditioning
from art2mus.features import load_embeddings
from art2mus.models.aligner import ImageAligner
from art2mus.models.backbone import load_backbone
from art2mus.models.pipeline import Art2MusPipeline, GenerationConfig
from art2mus.training.aligner import new_aligner
from stages.train import gather_pairs

pytestmark = pytest.mark.slow
CHANCE = 1 / 8


@pytest.fixture(scope="session")
def test_pairs(pipeline_repo: Path) -> pd.DataFrame:
    splits = pd.read_parquet(pipeline_repo / "data/processed/splits.parquet")
    return splits[splits["split"] == "test"].reset_index(drop=True)


@pytest.fixture(scope="session")
def correspondence(pipeline_repo: Path, test_pairs: pd.DataFrame) -> dict[str, CorrespondenceResult]:
    params = load_params(pipeline_repo / "params.yaml")
    backbone = load_backbone(pipeline_repo / params.prior.out_dir)
    aligner = ImageAligner.from_pretrained(pipeline_repo / "models/art2mus/aligner")
    image_ids, image_matrix, _, _ = load_embeddings(pipeline_repo / params.features.out_dir, "image")
    track_ids, latents = load_latents(pipeline_repo / params.latents.out_dir)
    data = gather_pairs(test_pairs, image_ids, image_matrix, track_ids, latents)

    def make_untrained(seed: int) -> ImageAligner:
        return new_aligner(data.image_embeds.shape[1], backbone.lm_width, params.train.model_copy(update={"seed": seed}))

    results = compare_conditioning(backbone, aligner.eval(), data.image_embeds, data.latents, make_untrained)
    figures = {name: result.summary() for name, result in results.items()}
    (pipeline_repo / "learning_figures.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))  # part of the test output: the run's figures
    return results


def test_the_test_split_is_large_and_unseen(pipeline_repo: Path, test_pairs: pd.DataFrame) -> None:
    splits = pd.read_parquet(pipeline_repo / "data/processed/splits.parquet")
    assert len(test_pairs) >= 64
    assert not set(test_pairs["artist"]) & set(splits.loc[splits["split"] == "train", "artist"])


def test_the_oracle_shows_the_prior_listens(correspondence) -> None:
    oracle = correspondence["oracle"]
    assert oracle.top1.low > CHANCE and oracle.gap.low > 0


def test_the_trained_aligner_retrieves_its_artwork(correspondence) -> None:
    trained, oracle = correspondence["trained"], correspondence["oracle"]
    assert trained.top1.value >= 0.25 and trained.top1.low > CHANCE
    assert trained.top1.value >= 0.5 * oracle.top1.value
    assert trained.gap.low > 0  # matched-vs-mismatched gap, 95 % CI above zero


def test_the_baselines_stay_at_chance(correspondence) -> None:
    for name in ("mean", "untrained"):  # one conditioning for every image; random aligners (pooled)
        result = correspondence[name]
        assert result.top1.low <= CHANCE <= result.top1.high, name


def spectral_flatness(wave: np.ndarray) -> float:
    """Geometric over arithmetic mean of the power spectrum: ~1 for white noise, small for tones."""
    power = np.abs(np.fft.rfft(wave)) ** 2 + 1e-12
    return float(np.exp(np.mean(np.log(power))) / np.mean(power))


def test_generated_music_is_within_sane_bounds(pipeline_repo: Path, test_pairs: pd.DataFrame) -> None:
    params = load_params(pipeline_repo / "params.yaml")
    pipeline = Art2MusPipeline.from_pretrained(pipeline_repo / "models/art2mus")
    images_dir = pipeline_repo / params.ingest.artgraph_dir / "imagesf2"
    images = [Image.open(images_dir / name).convert("RGB") for name in test_pairs["artwork_id"][:4]]
    waves = pipeline(images, GenerationConfig(steps=25, guidance_scale=3.5, seed=0))
    for wave in waves:
        assert len(wave) == round(params.audio.crop_seconds * params.audio.sample_rate)
        rms = float(np.sqrt(np.mean(wave**2)))
        assert 1e-2 < rms < 0.5, rms  # audible, and not a wall of sound (crest factor > 2)
        assert np.abs(wave).max() <= 0.99 + 1e-6  # never clips (the pipeline's limiter)
        assert spectral_flatness(wave) < 0.1  # tonal, not noise (white noise is ~0.56 here)
