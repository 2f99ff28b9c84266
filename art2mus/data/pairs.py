"""ArtSound pairs: one track per artwork, one-to-one."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from art2mus.config import PairParams
from art2mus.data.schema import PAIR_COLUMNS
from art2mus.data.similarity import pair_by_similarity
from art2mus.data.sources import IngestError, lacks_final_line_end, read_csv_strings
from art2mus.io import unreadable

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


def check_last_row_not_cut(path: Path, reasons: pd.Series) -> None:
    """Refuse a pairs CSV whose last row names an unknown item and has no line end: a cut-off id (131917
    read as 1319) would otherwise drop the pair silently, or pair the wrong track."""
    if path.suffix == ".parquet" or reasons.empty or "not in the manifest" not in reasons.iloc[-1]:
        return
    if lacks_final_line_end(path):
        raise unreadable(path, f"its last line (row {len(reasons)}) has no line end and was dropped: {reasons.iloc[-1]}")


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
    check_last_row_not_cut(Path(params.pairs_file), reasons)
    dropped = given[reasons != ""].assign(reason=reasons[reasons != ""]).reset_index(drop=True)
    return join_manifests(given[reasons == ""], artworks, tracks), dropped


FEATURES_DIR = "data/features"  # where the features stage writes embeddings (features.out_dir)


def join_manifests(pairs: pd.DataFrame, artworks: pd.DataFrame, tracks: pd.DataFrame) -> pd.DataFrame:
    """[artwork_id, track_id] pairs with the PAIR_COLUMNS the manifests hold, sorted by artwork."""
    joined = pairs[["artwork_id", "track_id"]].merge(
        artworks[["artwork_id", "artist", "style", "genre"]], on="artwork_id", how="left"
    ).merge(
        tracks[["track_id", "genre_top", "license"]].rename(columns={"genre_top": "track_genre_top"}),
        on="track_id", how="left",
    )
    joined = joined[list(PAIR_COLUMNS)].sort_values("artwork_id").reset_index(drop=True)
    return joined.astype({c: "string" for c, kind in PAIR_COLUMNS.items() if kind == "string"})


def pairs_by_similarity(
    params: PairParams, artworks: pd.DataFrame, tracks: pd.DataFrame, features_dir: str | Path = FEATURES_DIR
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One-to-one pairs by cross-modal cosine of the features stage's embeddings; returns (pairs, dropped)."""
    from art2mus.features import load_embeddings  # torch: only when pairing by similarity

    image = load_embeddings(Path(features_dir), "image")
    audio = load_embeddings(Path(features_dir), "audio")
    image_emb, audio_emb = np.asarray(image.matrix, dtype=np.float32), np.asarray(audio.matrix, dtype=np.float32)
    image_ids = pd.Series(image.ids, dtype="string")
    audio_ids = pd.Series(audio.ids).astype("int64")
    image_rows = image_ids.isin(artworks["artwork_id"]).to_numpy()
    audio_rows = audio_ids.isin(tracks["track_id"]).to_numpy()
    logger.info("pair: similarity of %s (%s) and %s (%s) embeddings from %s; %d image and %d audio "
                "embedding(s) of items not in the manifests ignored; %d manifest track(s) without one",
                image.encoder_id, image.shared_space, audio.encoder_id, audio.shared_space, features_dir,
                int((~image_rows).sum()), int((~audio_rows).sum()), int((~tracks["track_id"].isin(audio_ids)).sum()))
    result = pair_by_similarity(
        image_ids[image_rows].tolist(), image_emb[image_rows], audio_ids[audio_rows].tolist(), audio_emb[audio_rows],
        image.shared_space, audio.shared_space, params.similarity,
    )
    logger.info("pair: similarity report %s", json.dumps(result.report))
    missing = artworks.loc[~artworks["artwork_id"].isin(image_ids), ["artwork_id"]]
    no_embedding = missing.assign(
        track_id=pd.array([pd.NA] * len(missing), dtype="Int64"), similarity=float("nan"),
        reason=f"no image embedding in {features_dir} (re-run the features stage)",
    )
    dropped = result.dropped
    if len(no_embedding):
        dropped = pd.concat([dropped, no_embedding.astype(dropped.dtypes.to_dict())], ignore_index=True)
    return join_manifests(result.pairs, artworks, tracks), dropped.sort_values("artwork_id").reset_index(drop=True)


PAIRING_METHODS: dict[str, Callable[[PairParams, pd.DataFrame, pd.DataFrame], tuple[pd.DataFrame, pd.DataFrame]]] = {
    "given": pairs_from_file,
    "similarity": pairs_by_similarity,
}


def make_pairs(params: PairParams, artworks: pd.DataFrame, tracks: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pairs by the configured method, and the candidate pairs dropped with why."""
    pairs, dropped = PAIRING_METHODS[params.method](params, artworks, tracks)
    if len(dropped):
        logger.warning("pair: %d pair(s) dropped, e.g. %s: %s", len(dropped),
                       dropped.iloc[0]["artwork_id"], dropped.iloc[0]["reason"])
    return pairs, dropped
