"""Read a Free Music Archive copy: `fma_metadata/tracks.csv` (three-row header) and `fma_<size>/`."""

from __future__ import annotations

import ast
from pathlib import Path

import pandas as pd

from art2mus.config import FmaParams
from art2mus.data.sources import IngestError, Quarantined, read_csv_strings, rows_with_bad_text

SOURCE = "fma"
METADATA_DIR = "fma_metadata"
# (top level, field) in tracks.csv -> our column.
TRACK_FIELDS = {
    ("track", "title"): "title",
    ("artist", "name"): "artist",
    ("album", "title"): "album",
    ("track", "genre_top"): "genre_top",
    ("track", "genres"): "genres",
    ("track", "genres_all"): "genres_all",
    ("track", "license"): "license",
    ("track", "duration"): "duration_meta",
    ("set", "subset"): "subset",
}
# Which tracks.csv rows belong to an audio folder: fma_small ⊂ fma_medium ⊂ fma_large = fma_full.
SUBSETS = {
    "small": {"small"},
    "medium": {"small", "medium"},
    "large": {"small", "medium", "large"},
    "full": {"small", "medium", "large"},
}
# Files FMA ships in its audio folders that are not tracks.
NON_TRACK_FILES = {"README.txt", "checksums"}


def audio_dir_name(params: FmaParams) -> str:
    return f"fma_{params.size}"


def track_path(track_id: int, params: FmaParams) -> str:
    """FMA's layout: six-digit zero-padded id, in a folder named by its first three digits."""
    name = f"{track_id:06d}"
    return f"{audio_dir_name(params)}/{name[:3]}/{name}.mp3"


def parse_genre_list(text: str) -> list[int]:
    """FMA writes genre lists as Python literals, e.g. '[21, 1]'; '' and '[]' are empty."""
    if not text.strip():
        return []
    value = ast.literal_eval(text)
    if not isinstance(value, list) or not all(isinstance(item, int) for item in value):
        raise ValueError(f"not a list of genre ids: {text!r}")
    return value


def read_fma_tracks(root: Path, params: FmaParams) -> tuple[pd.DataFrame, list[Quarantined]]:
    """tracks.csv rows of the chosen subset under our column names, and the rows set aside."""
    csv_path = root / METADATA_DIR / "tracks.csv"
    raw, valid_utf8 = read_csv_strings(csv_path, header=[0, 1], index_col=0)
    missing = [".".join(field) for field in TRACK_FIELDS if field not in raw.columns]
    if missing:
        raise IngestError(
            f"{csv_path}: missing required column(s) {', '.join(repr(c) for c in missing)} "
            "(expected FMA's three-row header: top level, field, track_id)"
        )
    frame = raw[list(TRACK_FIELDS)].copy()
    frame.columns = list(TRACK_FIELDS.values())
    frame.insert(0, "track_key", raw.index.astype(str))
    frame = frame.reset_index(drop=True)

    quarantined: list[Quarantined] = []
    keep = pd.Series(True, index=frame.index)
    bad_text = rows_with_bad_text(frame) if not valid_utf8 else pd.Series(False, index=frame.index)
    track_ids: list[int | None] = []
    genres: list[list[int]] = []
    genres_all: list[list[int]] = []
    for index, row in frame.iterrows():
        key = row["track_key"]
        reason = None
        track_id = int(key) if key.strip().isdigit() else None
        if bad_text[index]:
            reason = "tracks.csv row is not valid UTF-8"
        elif track_id is None:
            reason = f"track_id {key!r} is not a non-negative integer"
        elif row["subset"] not in SUBSETS[params.size]:
            keep[index] = False  # another FMA subset: not an error, just not in this folder
        elif not row["license"].strip():
            reason = "no licence in tracks.csv"
        else:
            try:
                parsed = parse_genre_list(row["genres"]), parse_genre_list(row["genres_all"])
            except (ValueError, SyntaxError) as error:
                reason = f"unreadable genre list: {error}"
        if reason is not None:
            path = track_path(track_id, params) if track_id is not None else ""
            quarantined.append(Quarantined(SOURCE, key, path, reason))
            keep[index] = False
        track_ids.append(track_id)
        genres.append(parsed[0] if reason is None and keep[index] else [])
        genres_all.append(parsed[1] if reason is None and keep[index] else [])

    frame["track_id"] = pd.array(track_ids, dtype="Int64")
    frame["genres"] = genres
    frame["genres_all"] = genres_all
    frame = frame[keep].reset_index(drop=True)

    counts = frame["track_id"].map(frame["track_id"].value_counts())
    for _, row in frame[counts > 1].iterrows():
        quarantined.append(
            Quarantined(SOURCE, row["track_key"], track_path(int(row["track_id"]), params),
                        f"duplicate id: {counts[row.name]} rows of tracks.csv share it")
        )
    frame = frame[counts == 1].reset_index(drop=True)

    frame["track_id"] = frame["track_id"].astype("int64")
    frame["duration_meta"] = pd.to_numeric(frame["duration_meta"], errors="coerce")
    frame["path"] = [track_path(track_id, params) for track_id in frame["track_id"]]
    return frame.drop(columns=["track_key", "subset"]), quarantined


def read_fma_genres(root: Path) -> pd.DataFrame:
    """fma_metadata/genres.csv: genre_id, #tracks, parent, title, top_level."""
    csv_path = root / METADATA_DIR / "genres.csv"
    frame, _ = read_csv_strings(csv_path)
    required = ["genre_id", "parent", "title", "top_level"]
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise IngestError(f"{csv_path}: missing required column(s) {', '.join(map(repr, missing))}")
    return frame
