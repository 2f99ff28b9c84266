"""ArtSound pairs: one track per artwork, one-to-one."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from art2mus.config import PairParams
from art2mus.data.schema import PAIR_COLUMNS
from art2mus.data.sources import IngestError, read_csv_strings

logger = logging.getLogger(__name__)


def read_pairs_file(path: Path) -> pd.DataFrame:
    """A pairs file (CSV or Parquet) with at least `artwork_id` and `track_id`."""
    if not path.is_file():
        raise IngestError(f"{path}: pairs file not found (pair.pairs_file)")
    if path.suffix == ".parquet":
        pairs = pd.read_parquet(path).astype({"artwork_id": "string"})
    else:
        pairs, valid = read_csv_strings(path)
        if not valid:
            raise IngestError(f"{path}: not valid UTF-8")
    missing = [column for column in ("artwork_id", "track_id") if column not in pairs.columns]
    if missing:
        raise IngestError(f"{path}: missing required column(s) {', '.join(map(repr, missing))}")
    track_ids = pd.to_numeric(pairs["track_id"], errors="coerce")
    bad = pairs[track_ids.isna()]
    if len(bad):
        raise IngestError(f"{path}: {len(bad)} row(s) with a non-integer track_id, e.g. {bad['track_id'].iloc[0]!r}")
    return pairs.assign(track_id=track_ids.astype("int64"), artwork_id=pairs["artwork_id"].astype("string"))


def pairs_from_file(
    params: PairParams, artworks: pd.DataFrame, tracks: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Given pairs restricted to ingested items and made one-to-one; returns (pairs, dropped)."""
    given = read_pairs_file(Path(params.pairs_file))[["artwork_id", "track_id"]]
    reasons = pd.Series("", index=given.index, dtype="string")
    reasons[~given["artwork_id"].isin(artworks["artwork_id"])] = "artwork not in the manifest (missing or quarantined)"
    reasons[(reasons == "") & ~given["track_id"].isin(tracks["track_id"])] = "track not in the manifest (missing or quarantined)"
    reasons[(reasons == "") & given.duplicated("artwork_id", keep="first")] = "artwork already paired earlier in the file"
    reasons[(reasons == "") & given.duplicated("track_id", keep="first")] = "track already paired earlier in the file"
    dropped = given[reasons != ""].assign(reason=reasons[reasons != ""]).reset_index(drop=True)
    kept = given[reasons == ""]
    pairs = kept.merge(artworks[["artwork_id", "artist", "style", "genre"]], on="artwork_id", how="left").merge(
        tracks[["track_id", "genre_top", "license"]].rename(columns={"genre_top": "track_genre_top"}),
        on="track_id", how="left",
    )
    pairs = pairs[list(PAIR_COLUMNS)].sort_values("artwork_id").reset_index(drop=True)
    return pairs.astype({c: "string" for c, kind in PAIR_COLUMNS.items() if kind == "string"}), dropped


# `similarity` (one-to-one assignment by cross-modal cosine in a declared shared space) joins
# here when the features stage provides embeddings.
PAIRING_METHODS: dict[str, Callable[[PairParams, pd.DataFrame, pd.DataFrame], tuple[pd.DataFrame, pd.DataFrame]]] = {
    "given": pairs_from_file,
}


def make_pairs(params: PairParams, artworks: pd.DataFrame, tracks: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pairs by the configured method, and the candidate pairs dropped with why."""
    pairs, dropped = PAIRING_METHODS[params.method](params, artworks, tracks)
    if len(dropped):
        logger.warning("pair: %d pair(s) dropped, e.g. %s: %s", len(dropped),
                       dropped.iloc[0]["artwork_id"], dropped.iloc[0]["reason"])
    return pairs, dropped
