"""Stage `ingest`: ArtGraph export + FMA copy -> artworks/tracks/quarantine manifests."""

from __future__ import annotations

from pathlib import Path

from art2mus.config import load_params
from art2mus.data.ingest import QUARANTINE_MANIFEST, ingest
from art2mus.stages import OpenRun


def run(params_file: str | Path, open_run: OpenRun) -> None:
    """Ingest ingest.artgraph_dir and ingest.fma_dir into ingest.out_dir's manifests."""
    params = load_params(params_file)
    config = params.ingest
    with open_run("ingest", config, params.tracking.experiment) as tracked:
        out_dir = Path(config.out_dir)
        crop_end = params.audio.crop_offset_seconds + params.audio.crop_seconds  # shorter tracks are quarantined
        summary = ingest(Path(config.artgraph_dir), Path(config.fma_dir), out_dir, config, min_track_seconds=crop_end)
        tracked.log_metrics(summary)
        tracked.log_artifact(out_dir / QUARANTINE_MANIFEST)
