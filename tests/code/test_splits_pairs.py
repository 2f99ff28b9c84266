"""Pairs are one-to-one over ingested items; splits keep artists apart and follow the ratios."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from art2mus.config import PairParams, SplitParams
from art2mus.data.pairs import make_pairs
from art2mus.data.sources import IngestError
from art2mus.data.splits import make_splits
from art2mus.io import UnreadableFile


def synthetic_pairs(n: int = 600, artists: int = 80, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    sizes = rng.zipf(1.6, artists).clip(1, 40)
    artist = np.repeat([f"artist {i}" for i in range(artists)], sizes)[:n]
    styles = np.array(["Cubism", "Impressionism", "Baroque", "Minimalism"])
    return pd.DataFrame({
        "artwork_id": [f"a{i}.jpg" for i in range(len(artist))],
        "track_id": np.arange(len(artist)),
        "artist": artist,
        "style": styles[rng.integers(0, 4, len(artist))],
    })


def test_splits_are_artist_disjoint_near_the_ratios_and_stratified() -> None:
    pairs = synthetic_pairs()
    splits = make_splits(pairs, SplitParams())
    assert splits.groupby("artist")["split"].nunique().max() == 1
    assert len(splits) == len(pairs) and set(splits["artwork_id"]) == set(pairs["artwork_id"])
    shares = splits["split"].value_counts(normalize=True)
    assert abs(shares["train"] - 0.7) < 0.05 and abs(shares["val"] - 0.1) < 0.05 and abs(shares["test"] - 0.2) < 0.05
    by_style = pd.crosstab(splits["style"], splits["split"], normalize="index")
    assert (by_style["test"] - 0.2).abs().max() < 0.1  # every style present in test near its share


def test_splits_are_seeded() -> None:
    pairs = synthetic_pairs()
    a = make_splits(pairs, SplitParams(seed=1))
    b = make_splits(pairs, SplitParams(seed=1))
    c = make_splits(pairs, SplitParams(seed=2))
    pd.testing.assert_frame_equal(a, b)
    assert not a["split"].equals(c["split"])


@pytest.fixture
def manifests() -> tuple[pd.DataFrame, pd.DataFrame]:
    artworks = pd.DataFrame({"artwork_id": ["a.jpg", "b.jpg", "c.jpg"], "artist": ["X", "Y", "Y"],
                             "style": ["Cubism"] * 3, "genre": ["portrait"] * 3})
    tracks = pd.DataFrame({"track_id": [1, 2, 3], "genre_top": ["Rock"] * 3, "license": ["CC BY"] * 3})
    return artworks, tracks


def test_given_pairs_drop_unknown_and_repeated_items_with_reasons(tmp_path: Path, manifests) -> None:
    pairs_file = tmp_path / "pairs.csv"
    pd.DataFrame({"artwork_id": ["a.jpg", "b.jpg", "ghost.jpg", "c.jpg", "a.jpg"],
                  "track_id": [1, 9, 2, 1, 3]}).to_csv(pairs_file, index=False)
    pairs, dropped = make_pairs(PairParams(pairs_file=str(pairs_file)), *manifests)
    assert pairs[["artwork_id", "track_id"]].values.tolist() == [["a.jpg", 1]]
    assert pairs.iloc[0]["license"] == "CC BY" and pairs.iloc[0]["artist"] == "X"
    reasons = dict(zip(dropped["artwork_id"], dropped["reason"]))
    assert "track not in the manifest" in reasons["b.jpg"]
    assert "artwork not in the manifest" in reasons["ghost.jpg"]
    assert "track already paired" in reasons["c.jpg"]
    assert len(dropped) == 4


def test_a_malformed_pairs_file_is_a_clear_error(tmp_path: Path, manifests) -> None:
    pairs_file = tmp_path / "pairs.csv"
    pairs_file.write_text("artwork,track\na.jpg,1\n")
    with pytest.raises(IngestError, match="missing required column"):
        make_pairs(PairParams(pairs_file=str(pairs_file)), *manifests)
    pairs_file.write_text("artwork_id,track_id\na.jpg,one\n")
    with pytest.raises(IngestError, match="non-integer track_id"):
        make_pairs(PairParams(pairs_file=str(pairs_file)), *manifests)


def test_a_pairs_file_cut_inside_its_last_id_is_refused_not_shortened(tmp_path: Path, manifests) -> None:
    pairs_file = tmp_path / "pairs.csv"
    pairs_file.write_text("artwork_id,track_id\nb.jpg,2\na.jpg,1")  # complete, but no final line end: kept
    pairs, _ = make_pairs(PairParams(pairs_file=str(pairs_file)), *manifests)
    assert len(pairs) == 2
    pairs_file.write_text("artwork_id,track_id\nb.jpg,2\na.jpg,13")  # "131" cut to "13": not a known track
    with pytest.raises(UnreadableFile, match=r"pairs\.csv: unreadable, truncated or corrupt \(its last line \(row 2\)"):
        make_pairs(PairParams(pairs_file=str(pairs_file)), *manifests)
    pairs_file.write_text("artwork_id,track_id\nb.jpg,2\na.jpg,13\n")  # a whole line naming an unknown track: dropped
    pairs, dropped = make_pairs(PairParams(pairs_file=str(pairs_file)), *manifests)
    assert len(pairs) == 1 and "track not in the manifest" in dropped["reason"].iloc[0]
