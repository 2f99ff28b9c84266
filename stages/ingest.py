"""Stage `ingest`: ArtGraph export + FMA copy -> artworks/tracks/quarantine manifests."""

from pathlib import Path

from art2mus.config import load_params
from art2mus.data.ingest import QUARANTINE_MANIFEST, ingest
from art2mus.stage import run_stage
from art2mus.tracking import stage_run


def main() -> None:
    params = load_params()
    config = params.ingest
    with stage_run("ingest", config, params.tracking.experiment) as run:
        out_dir = Path(config.out_dir)
        crop_end = params.audio.crop_offset_seconds + params.audio.crop_seconds  # shorter tracks are quarantined
        summary = ingest(Path(config.artgraph_dir), Path(config.fma_dir), out_dir, config, min_track_seconds=crop_end)
        run.log_metrics(summary)
        run.log_artifact(out_dir / QUARANTINE_MANIFEST)


if __name__ == "__main__":
    run_stage("ingest", main)
