"""Stage `latents`: latents of every paired track's crop with the prior's codec (or AudioLDM2's VAE)."""

from __future__ import annotations

from pathlib import Path

from art2mus.config import load_params
from art2mus.data.latents import compute_latents
from art2mus.data.schema import SPLITS_TABLE, TRACKS_MANIFEST
from art2mus.io import read_table, write_json_atomic
from art2mus.models.loader import load_backbone
from art2mus.stages import OpenRun

METRICS = Path("data/latents_summary.json")


def run(params_file: str | Path, open_run: OpenRun) -> None:
    """Encode the paired tracks' crops into latents.out_dir's cache."""
    params = load_params(params_file)
    logged = {"latents": params.latents.model_dump(mode="json"), "audio": params.audio.model_dump(mode="json")}
    with open_run("latents", logged, params.tracking.experiment) as tracked:
        backbone = load_backbone(params.prior.out_dir, params.backbone.device)
        tracks = read_table(Path(params.ingest.out_dir) / TRACKS_MANIFEST)
        paired = tracks[tracks["track_id"].isin(read_table(SPLITS_TABLE)["track_id"])]
        summary = compute_latents(paired, Path(params.ingest.fma_dir), backbone, params.audio,
                                  Path(params.latents.out_dir), params.latents.batch_size)
        write_json_atomic(summary, METRICS)
        tracked.log_metrics(summary)
