"""Column contracts of the tables the data layer writes (manifests, quarantine, pairs, splits)."""

from __future__ import annotations

# data/interim/artworks.parquet — one row per readable ArtGraph image with metadata.
ARTWORK_COLUMNS = {
    "artwork_id": "string",  # the export's `name` (the image file name), unique
    "path": "string",  # relative to the ArtGraph root, e.g. imagesf2/<name>
    "title": "string",
    "artist": "string",
    "style": "string",
    "genre": "string",
    "date": "string",
    "sha256": "string",  # content hash of the image file
    "bytes": "int64",
    "width": "int64",
    "height": "int64",
    "mode": "string",  # PIL mode: RGB, L, ...
    "format": "string",  # PIL format: JPEG, PNG, ...
}
# Extra export columns (emotion, tags, media, ...) are kept after these.

# data/interim/tracks.parquet — one row per decodable FMA track with metadata.
TRACK_COLUMNS = {
    "track_id": "int64",
    "path": "string",  # relative to the FMA root, e.g. fma_large/000/000002.mp3
    "title": "string",
    "artist": "string",  # FMA artist.name
    "album": "string",
    "genre_top": "string",
    "genres": "list<int64>",
    "genres_all": "list<int64>",
    "license": "string",  # FMA's per-track licence, travels with the data
    "duration_meta": "float64",  # seconds, as tracks.csv declares
    "sha256": "string",
    "bytes": "int64",
    "duration": "float64",  # seconds, as decoded
    "sample_rate": "int64",
    "channels": "int64",
    "frames": "int64",
}

# data/interim/quarantine.parquet — every bad input, with why.
QUARANTINE_COLUMNS = {
    "source": "string",  # artgraph | fma
    "item": "string",  # artwork_id / track_id / CSV line, when known
    "path": "string",  # as named by the source (may be hostile; never opened when it escapes)
    "reason": "string",
}

# data/interim/pairs.parquet — ArtSound pairs, one-to-one.
PAIR_COLUMNS = {
    "artwork_id": "string",
    "track_id": "int64",
    "artist": "string",  # the artwork's artist (the split's group)
    "style": "string",
    "genre": "string",
    "track_genre_top": "string",
    "license": "string",
}

# data/processed/splits.parquet — the pairs with their split.
SPLIT_COLUMNS = {**PAIR_COLUMNS, "split": "string"}  # split: train | val | test
SPLIT_NAMES = ("train", "val", "test")

# Where the stages put them (relative to the project root).
ARTWORKS_MANIFEST = "artworks.parquet"
TRACKS_MANIFEST = "tracks.parquet"
QUARANTINE_MANIFEST = "quarantine.parquet"
PAIRS_TABLE = "data/interim/pairs.parquet"
SPLITS_TABLE = "data/processed/splits.parquet"
REPORTS_DIR = "data/reports"  # one <gate>.json per quality gate
GATES = ("validate_raw", "validate_splits")  # the DVC stages that are data-quality gates
