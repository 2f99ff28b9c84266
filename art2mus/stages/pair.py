"""Stage `pair`: ArtSound pairs, one track per artwork, one-to-one."""

from __future__ import annotations

from pathlib import Path

from art2mus.config import load_params
from art2mus.data.pairs import make_pairs
from art2mus.data.schema import ARTWORKS_MANIFEST, PAIRS_TABLE, TRACKS_MANIFEST
from art2mus.io import read_table, write_table_atomic
from art2mus.stages import OpenRun

DROPPED_TABLE = "data/interim/pairs_dropped.parquet"


def run(params_file: str | Path, open_run: OpenRun) -> None:
    """Pair the manifests' artworks and tracks; write the pairs and the dropped ones."""
    params = load_params(params_file)
    manifests = Path(params.ingest.out_dir)
    with open_run("pair", params.pair, params.tracking.experiment) as tracked:
        artworks = read_table(manifests / ARTWORKS_MANIFEST)
        tracks = read_table(manifests / TRACKS_MANIFEST)
        pairs, dropped = make_pairs(params.pair, artworks, tracks)
        write_table_atomic(pairs, PAIRS_TABLE)
        write_table_atomic(dropped, DROPPED_TABLE)
        tracked.log_metrics({"pairs": len(pairs), "pairs_dropped": len(dropped)})
