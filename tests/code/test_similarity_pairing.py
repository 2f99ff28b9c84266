"""Similarity pairing recovers planted pairs, is at chance on random encoders, and refuses non-shared spaces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import linear_sum_assignment

from art2mus.config import PairParams, SimilarityParams
from art2mus.data.pairs import PAIRING_METHODS, pairs_by_similarity
from art2mus.data.schema import PAIR_COLUMNS
from art2mus.data.similarity import (
    AUCTION_EPSILON,
    UNPAIRED_VALUE,
    SimilarityPairingError,
    auction_matching,
    pair_by_similarity,
    top_k_tracks,
    unit_rows,
)
from art2mus.errors import Art2MusError

SPACE = "imagebind"
N_FACTORS, N_LEVELS = 3, 4
DENSE = SimilarityParams(min_similarity=-1.0)
SPARSE = SimilarityParams(min_similarity=-1.0, dense_max=8, top_k=16)


def assign_pairs(*args) -> tuple[pd.DataFrame, dict]:
    """pair_by_similarity's pairs and report."""
    result = pair_by_similarity(*args)
    return result.pairs, result.report


def planted_embeddings(
    n_pairs: int, n_extra_tracks: int = 0, identity_dim: int = 24, noise: float = 1.0, seed: int = 0
) -> tuple[list[str], np.ndarray, list[int], np.ndarray, dict[str, int]]:
    """Image and audio embeddings built from the same factor one-hots + a per-pair identity + noise.

    The shared space is [one-hot of each factor's level | identity]; an artwork's true track shares
    its factor levels and its identity vector, so it is its best match up to the noise. Extra tracks
    have their own levels and identities. Returns ids, embeddings and the true artwork -> track map.
    """
    rng = np.random.default_rng(seed)
    n_tracks = n_pairs + n_extra_tracks

    def factor_one_hots(count: int) -> np.ndarray:
        levels = rng.integers(0, N_LEVELS, (count, N_FACTORS))
        return np.concatenate([np.eye(N_LEVELS)[levels[:, f]] for f in range(N_FACTORS)], axis=1) / np.sqrt(N_FACTORS)

    factors = factor_one_hots(n_tracks)
    identity = rng.standard_normal((n_tracks, identity_dim)) / np.sqrt(identity_dim)
    clean = np.concatenate([factors, identity], axis=1)
    audio = clean + noise * rng.standard_normal(clean.shape) / np.sqrt(clean.shape[1])
    image = clean[:n_pairs] + noise * rng.standard_normal((n_pairs, clean.shape[1])) / np.sqrt(clean.shape[1])
    track_ids = (1000 + rng.permutation(n_tracks)).tolist()
    artwork_ids = [f"art-{i:05d}.jpg" for i in range(n_pairs)]
    return artwork_ids, image, track_ids, audio, dict(zip(artwork_ids, track_ids[:n_pairs]))


def recovery(pairs: pd.DataFrame, truth: dict[str, int]) -> float:
    """Fraction of all planted artworks paired with their own track."""
    return float((pairs["track_id"].to_numpy() == pairs["artwork_id"].map(truth).to_numpy()).sum() / len(truth))


def assert_one_to_one(pairs: pd.DataFrame) -> None:
    assert pairs["artwork_id"].is_unique and pairs["track_id"].is_unique


@pytest.mark.parametrize("params", [DENSE, SPARSE], ids=["dense", "sparse"])
def test_planted_pairs_are_recovered(params: SimilarityParams) -> None:
    artwork_ids, image, track_ids, audio, truth = planted_embeddings(400, n_extra_tracks=100)
    pairs, report = assign_pairs(artwork_ids, image, track_ids, audio, SPACE, SPACE, params)
    assert recovery(pairs, truth) >= 0.8
    assert_one_to_one(pairs)
    assert report["method"] == ("dense" if params is DENSE else "sparse")
    assert report["paired"] == 400 and report["unmatched"] == 0 and report["dropped_below_threshold"] == 0
    assert report["similarity"]["mean"] > report["random_pair_similarity_mean"] + 0.3
    assert report["top1_fraction"] >= 0.8
    assert report["similarity"]["q05"] <= report["similarity"]["q50"] <= report["similarity"]["q95"]


def test_random_encoders_pair_at_chance() -> None:
    rng = np.random.default_rng(1)
    n = 400
    artwork_ids, track_ids = [f"a{i}" for i in range(n)], list(range(n))
    truth = dict(zip(artwork_ids, track_ids))
    for params in (DENSE, SPARSE):
        pairs, report = assign_pairs(artwork_ids, rng.standard_normal((n, 32)), track_ids,
                                     rng.standard_normal((n, 32)), SPACE, SPACE, params)
        assert recovery(pairs, truth) < 0.03  # chance is 1/n = 0.0025
        assert abs(report["random_pair_similarity_mean"]) < 0.02


@pytest.mark.parametrize(("image_space", "audio_space", "expected"), [
    (None, "imagebind", "image encoder declares no shared embedding space"),
    ("clip", "clap", "'clip' is not the audio encoder's space 'clap'"),
    ("imagebind", "", "audio encoder declares no shared embedding space"),
])
def test_encoders_without_a_common_shared_space_are_refused(image_space, audio_space, expected) -> None:
    image, audio = np.ones((3, 8)), np.ones((3, 8))  # same sizes: the sizes matching proves nothing
    with pytest.raises(Art2MusError, match=expected) as error:
        assign_pairs(["a", "b", "c"], image, [1, 2, 3], audio, image_space, audio_space, DENSE)
    assert "features.image_encoder.name: imagebind" in str(error.value)
    assert "CLIP-image against CLAP-audio cosine is meaningless" in str(error.value)


def test_malformed_embeddings_are_refused() -> None:
    ids, tracks = ["a", "b", "c"], [1, 2, 3]
    with pytest.raises(SimilarityPairingError, match="8 dimensions, audio embeddings 6"):
        assign_pairs(ids, np.ones((3, 8)), tracks, np.ones((3, 6)), SPACE, SPACE, DENSE)
    with pytest.raises(SimilarityPairingError, match="3 id.s. for 2 row"):
        assign_pairs(ids, np.ones((2, 8)), tracks, np.ones((3, 8)), SPACE, SPACE, DENSE)
    bad = np.ones((3, 8))
    bad[1, 2] = np.nan
    with pytest.raises(SimilarityPairingError, match="NaN or infinite values, e.g. 'b'"):
        assign_pairs(ids, bad, tracks, np.ones((3, 8)), SPACE, SPACE, DENSE)
    with pytest.raises(SimilarityPairingError, match="all-zero"):
        assign_pairs(ids, np.ones((3, 8)), tracks, np.zeros((3, 8)), SPACE, SPACE, DENSE)
    with pytest.raises(SimilarityPairingError, match="duplicated id"):
        assign_pairs(["a", "a", "c"], np.ones((3, 8)), tracks, np.ones((3, 8)), SPACE, SPACE, DENSE)


@pytest.mark.parametrize("base", [DENSE, SPARSE], ids=["dense", "sparse"])
def test_threshold_drops_low_pairs_and_reports_them(base: SimilarityParams) -> None:
    artwork_ids, image, track_ids, audio, _ = planted_embeddings(200, n_extra_tracks=50, noise=1.2)
    unthresholded = assign_pairs(artwork_ids, image, track_ids, audio, SPACE, SPACE, base)[0]
    threshold = float(np.median(unthresholded["similarity"]))
    params = base.model_copy(update={"min_similarity": threshold})
    result = pair_by_similarity(artwork_ids, image, track_ids, audio, SPACE, SPACE, params)
    assert (result.pairs["similarity"] >= threshold).all()
    below = result.dropped[result.dropped["reason"].str.contains("below pair.similarity.min_similarity")]
    assert 50 < len(below) < 150 and (below["similarity"] < threshold).all()
    assert result.report["dropped_below_threshold"] == len(below)
    assert result.report["paired"] + len(result.dropped) == 200
    assert result.report["similarity"]["min"] >= threshold
    assert not set(result.pairs["artwork_id"]) & set(result.dropped["artwork_id"])


@pytest.mark.parametrize("params", [DENSE, SPARSE], ids=["dense", "sparse"])
def test_rectangular_problems_both_ways(params: SimilarityParams) -> None:
    artwork_ids, image, track_ids, audio, truth = planted_embeddings(120, n_extra_tracks=180)
    more_tracks = pair_by_similarity(artwork_ids, image, track_ids, audio, SPACE, SPACE, params)
    assert more_tracks.report["paired"] == 120 and len(more_tracks.dropped) == 0
    assert recovery(more_tracks.pairs, truth) >= 0.8
    assert_one_to_one(more_tracks.pairs)

    # Reverse: 300 "artworks" (the tracks' embeddings) for 120 "tracks" (the artworks').
    reverse = pair_by_similarity([f"t{t}" for t in track_ids], audio, list(range(120)), image, SPACE, SPACE, params)
    assert reverse.report["paired"] == 120 and reverse.report["unmatched"] == 180
    assert_one_to_one(reverse.pairs)
    assert reverse.dropped["track_id"].isna().all() and reverse.dropped["reason"].str.startswith("no track left").all()
    reverse_truth = {f"t{track}": i for i, track in enumerate(truth.values())}
    matched = reverse.pairs["artwork_id"].map(reverse_truth) == reverse.pairs["track_id"]
    assert matched.sum() >= 0.8 * 120


def test_sparse_leaves_artworks_unpaired_when_candidates_run_out() -> None:
    rng = np.random.default_rng(2)
    hub = rng.standard_normal(16)
    image = hub + 0.05 * rng.standard_normal((30, 16))  # every artwork's top-1 is the hub track
    audio = np.concatenate([hub[None], rng.standard_normal((59, 16))])
    params = SimilarityParams(min_similarity=-1.0, dense_max=8, top_k=1)
    result = pair_by_similarity([f"a{i}" for i in range(30)], image, list(range(60)), audio, SPACE, SPACE, params)
    assert result.report["paired"] == 1 and result.report["unmatched"] == 29
    assert result.pairs["track_id"].tolist() == [0]
    assert result.dropped["reason"].str.contains("raise pair.similarity.top_k").all()


def test_sparse_and_dense_agree_on_a_medium_problem() -> None:
    artwork_ids, image, track_ids, audio, _ = planted_embeddings(800, n_extra_tracks=400, noise=1.0, seed=3)
    dense, dense_report = assign_pairs(artwork_ids, image, track_ids, audio, SPACE, SPACE, DENSE)
    sparse, sparse_report = assign_pairs(artwork_ids, image, track_ids, audio, SPACE, SPACE,
                                         SimilarityParams(min_similarity=-1.0, dense_max=100, top_k=32))
    assert (dense_report["method"], sparse_report["method"]) == ("dense", "sparse")
    assert len(dense) == len(sparse) == 800
    assert abs(sparse["similarity"].sum() - dense["similarity"].sum()) <= 0.01 * dense["similarity"].sum()
    same = dense.merge(sparse, on=["artwork_id", "track_id"])
    assert len(same) >= 0.9 * 800


def exact_candidate_optimum(candidates: np.ndarray, similarity: np.ndarray, n_tracks: int) -> float:
    """Best total value on the candidate graph (pairs' similarity + UNPAIRED_VALUE per unpaired artwork)."""
    n = len(candidates)
    benefit = np.full((n, n_tracks + n), -1e6)
    benefit[np.arange(n)[:, None], candidates] = similarity
    benefit[np.arange(n), n_tracks + np.arange(n)] = UNPAIRED_VALUE
    rows, cols = linear_sum_assignment(benefit, maximize=True)
    return float(benefit[rows, cols].sum())


@pytest.mark.parametrize("hub_strength", [0.0, 3.0], ids=["planted", "hub-tracks"])
def test_auction_is_optimal_on_the_candidates_to_within_epsilon(hub_strength: float) -> None:
    artwork_ids, image, track_ids, audio, _ = planted_embeddings(300, n_extra_tracks=60, noise=1.2, seed=4)
    rng = np.random.default_rng(4)
    common = rng.standard_normal(image.shape[1])
    image = image + 0.3 * hub_strength * common / np.linalg.norm(common)
    audio = audio + hub_strength * np.abs(rng.standard_normal((len(audio), 1))) * common / np.linalg.norm(common)
    candidates, similarity = top_k_tracks(unit_rows(artwork_ids, image, "image"), unit_rows(track_ids, audio, "audio"), 6)
    rows, cols = auction_matching(candidates, similarity, len(audio))
    assert len(set(rows.tolist())) == len(rows) and len(set(cols.tolist())) == len(cols)
    chosen = similarity[rows, [list(candidates[r]).index(c) for r, c in zip(rows, cols)]]
    total = chosen.sum() + UNPAIRED_VALUE * (300 - len(rows))
    assert total >= exact_candidate_optimum(candidates, similarity, len(audio)) - 300 * AUCTION_EPSILON


def test_identical_tracks_still_pair_one_to_one() -> None:
    image = np.random.default_rng(5).standard_normal((60, 8))
    audio = np.ones((40, 8))  # every track ties with every other: prices rise by epsilon, and stop
    params = SimilarityParams(min_similarity=-1.0, dense_max=8, top_k=16)
    result = pair_by_similarity([f"a{i}" for i in range(60)], image, list(range(40)), audio, SPACE, SPACE, params)
    assert_one_to_one(result.pairs)
    assert 16 <= result.report["paired"] <= 40  # ties: the top-16 sets may differ between artworks
    assert result.report["paired"] + result.report["unmatched"] == 60


def test_empty_sides_give_no_pairs() -> None:
    pairs, report = assign_pairs([], np.empty((0, 8)), [1, 2], np.ones((2, 8)), SPACE, SPACE, DENSE)
    assert len(pairs) == 0 and report["paired"] == 0 and report["similarity"]["mean"] is None


def write_features(features_dir: Path, image_space: str | None = SPACE, audio_space: str | None = SPACE) -> dict:
    """Planted embeddings written as the features stage writes them; returns the true artwork -> track map."""
    import torch

    from art2mus.features.embeddings import EMBEDDING_FILES, Embeddings, save_embeddings

    artwork_ids, image, track_ids, audio, truth = planted_embeddings(40, n_extra_tracks=10)
    for modality, ids, matrix, space in (("image", artwork_ids, image, image_space),
                                         ("audio", track_ids, audio, audio_space)):
        embeddings = Embeddings(ids=ids, matrix=torch.from_numpy(matrix).float(), encoder_id=f"test-{modality}",
                                shared_space=space)
        save_embeddings(embeddings, modality, features_dir / EMBEDDING_FILES[modality])
    return truth


def manifests_for(truth: dict[str, int]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Manifests where art-00000 was quarantined and new.jpg is not embedded yet; 10 extra tracks."""
    artworks = pd.DataFrame({"artwork_id": sorted(truth)[1:] + ["new.jpg"], "artist": "X", "style": "Cubism",
                             "genre": "portrait"})
    tracks = pd.DataFrame({"track_id": range(1000, 1050), "genre_top": "Rock", "license": "CC BY"})
    return artworks, tracks


def test_similarity_method_joins_manifests_and_reports_missing_embeddings(tmp_path: Path) -> None:
    truth = write_features(tmp_path)
    artworks, tracks = manifests_for(truth)
    assert PAIRING_METHODS["similarity"] is pairs_by_similarity
    pairs, dropped = pairs_by_similarity(PairParams(method="similarity"), artworks, tracks, features_dir=tmp_path)
    assert list(pairs.columns) == list(PAIR_COLUMNS) and len(pairs) == 39
    assert str(pairs["artwork_id"].dtype) == "string" and str(pairs["track_id"].dtype) == "int64"
    assert "art-00000.jpg" not in set(pairs["artwork_id"]) and (pairs["license"] == "CC BY").all()
    assert_one_to_one(pairs)
    assert recovery(pairs, {k: v for k, v in truth.items() if k != "art-00000.jpg"}) >= 0.8 * 39 / 40
    assert dropped[["artwork_id", "reason"]].values.tolist() == [
        ["new.jpg", f"no image embedding in {tmp_path} (re-run the features stage)"]
    ]


def test_similarity_method_refuses_encoders_without_a_shared_space(tmp_path: Path) -> None:
    artworks, tracks = manifests_for(write_features(tmp_path, image_space=None, audio_space="clap"))
    with pytest.raises(Art2MusError, match="no shared embedding space"):
        pairs_by_similarity(PairParams(method="similarity"), artworks, tracks, features_dir=tmp_path)
