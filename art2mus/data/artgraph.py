"""Read an ArtGraph export: a metadata CSV plus `imagesf2/<name>` images."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from art2mus.config import ArtGraphParams
from art2mus.data.sources import (
    IngestError,
    Quarantined,
    read_csv_strings,
    rows_with_bad_text,
    unsafe_path_reason,
)

SOURCE = "artgraph"

logger = logging.getLogger(__name__)


def metadata_path(root: Path, params: ArtGraphParams) -> Path:
    """The export's metadata CSV: `metadata_file` under `root` (an absolute one as it is).

    When that file is missing and the folder holds exactly one CSV, that one is used and the log says so;
    otherwise IngestError names what the folder holds and how to choose."""
    configured = root / params.metadata_file
    if configured.is_file():
        return configured
    found = sorted(path for path in root.glob("*.csv") if path.is_file()) if root.is_dir() else []
    if len(found) == 1 and configured.parent == root:
        logger.info("ingest: %s not found in %s; reading the only CSV there, %s (choose another with "
                    "--artgraph-metadata or ingest.artgraph.metadata_file)", configured.name, root, found[0].name)
        return found[0]
    holds = (f"the folder holds {len(found)} CSV files ({', '.join(repr(path.name) for path in found)})" if found
             else "the folder holds no CSV file")
    raise IngestError(f"{configured}: metadata file not found; {holds}: name the export's metadata CSV with "
                      "--artgraph-metadata FILE or params.yaml ingest.artgraph.metadata_file")


def read_artgraph_metadata(root: Path, params: ArtGraphParams) -> tuple[pd.DataFrame, list[Quarantined]]:
    """The export's rows under our column names, keyed by `artwork_id`, and the rows set aside.

    Missing required columns are fatal; bad rows (not UTF-8, no name, duplicate name) are
    quarantined. The image path is `<images_dir>/<name>` relative to `root`.
    """
    csv_path = metadata_path(root, params)
    frame, valid_utf8 = read_csv_strings(csv_path)
    mapping = params.columns.model_dump()
    missing = [source for source in mapping.values() if source not in frame.columns]
    if missing:
        raise IngestError(
            f"{csv_path}: missing required column(s) {', '.join(repr(c) for c in missing)} "
            f"(mapped in params.yaml ingest.artgraph.columns; the file has: "
            f"{', '.join(map(repr, frame.columns))})"
        )
    frame = frame.rename(columns={source: ours for ours, source in mapping.items()})
    frame.insert(0, "artwork_id", frame.pop("name"))
    frame["csv_line"] = frame.index + 2  # header is line 1

    quarantined: list[Quarantined] = []

    def set_aside(mask: pd.Series, reason_of) -> None:
        nonlocal frame
        for _, row in frame[mask].iterrows():
            name = row["artwork_id"]
            # A name with a path in it is reported as given, never joined onto the images folder.
            path = name if ("/" in name or "\\" in name) else _image_path(params, name)
            quarantined.append(Quarantined(SOURCE, name, path, reason_of(row)))
        frame = frame[~mask]

    images_root = root / params.images_dir
    name_problem = frame["artwork_id"].map(lambda name: _name_problem(images_root, name))
    set_aside(name_problem.notna(), lambda r: name_problem[r.name])

    if not valid_utf8:
        set_aside(rows_with_bad_text(frame), lambda r: f"{csv_path.name} line {r['csv_line']}: not valid UTF-8")
    set_aside(frame["artwork_id"].str.strip() == "", lambda r: f"{csv_path.name} line {r['csv_line']}: no image name")
    counts = frame["artwork_id"].map(frame["artwork_id"].value_counts())
    set_aside(counts > 1, lambda r: f"duplicate id: {counts[r.name]} rows name this image")

    frame = frame.drop(columns="csv_line").reset_index(drop=True)
    frame["path"] = [_image_path(params, name) for name in frame["artwork_id"]]
    return frame, quarantined


def _name_problem(images_root: Path, name: str) -> str | None:
    """Why an image name is not a bare file name inside the images folder, or None."""
    if not name:
        return None  # reported below as a row without a name
    reason = unsafe_path_reason(images_root, name)
    if reason is None and ("/" in name or "\\" in name):
        reason = "image name is not a bare file name (contains a path separator)"
    return reason


def _image_path(params: ArtGraphParams, name: str) -> str:
    return f"{params.images_dir}/{name}"
