"""Stage `latents`: latents of every paired track's crop with the prior's codec (or AudioLDM2's VAE)."""

from pathlib import Path

from art2mus.config import load_params
from art2mus.data.latents import compute_latents
from art2mus.data.schema import SPLITS_TABLE, TRACKS_MANIFEST
from art2mus.io import read_table, write_json_atomic
from art2mus.models.loader import load_backbone
from art2mus.stage import run_stage
from art2mus.tracking import stage_run

METRICS = Path("data/latents_summary.json")


def main() -> None:
    params = load_params()
    logged = {"latents": params.latents.model_dump(mode="json"), "audio": params.audio.model_dump(mode="json")}
    with stage_run("latents", logged, params.tracking.experiment) as run:
        backbone = load_backbone(params.prior.out_dir, params.backbone.device)
        tracks = read_table(Path(params.ingest.out_dir) / TRACKS_MANIFEST)
        paired = tracks[tracks["track_id"].isin(read_table(SPLITS_TABLE)["track_id"])]
        summary = compute_latents(paired, Path(params.ingest.fma_dir), backbone, params.audio,
                                  Path(params.latents.out_dir), params.latents.batch_size)
        write_json_atomic(summary, METRICS)
        run.log_metrics(summary)


if __name__ == "__main__":
    run_stage("latents", main)
