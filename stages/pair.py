"""Stage `pair`: ArtSound pairs, one track per artwork, one-to-one."""

from pathlib import Path

from art2mus.config import load_params
from art2mus.data.pairs import make_pairs
from art2mus.data.schema import ARTWORKS_MANIFEST, PAIRS_TABLE, TRACKS_MANIFEST
from art2mus.io import read_table, write_table_atomic
from art2mus.stage import run_stage
from art2mus.tracking import stage_run

DROPPED_TABLE = "data/interim/pairs_dropped.parquet"


def main() -> None:
    params = load_params()
    manifests = Path(params.ingest.out_dir)
    with stage_run("pair", params.pair, params.tracking.experiment) as run:
        artworks = read_table(manifests / ARTWORKS_MANIFEST)
        tracks = read_table(manifests / TRACKS_MANIFEST)
        pairs, dropped = make_pairs(params.pair, artworks, tracks)
        write_table_atomic(pairs, PAIRS_TABLE)
        write_table_atomic(dropped, DROPPED_TABLE)
        run.log_metrics({"pairs": len(pairs), "pairs_dropped": len(dropped)})


if __name__ == "__main__":
    run_stage("pair", main)
