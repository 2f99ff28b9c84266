"""Stage `prior`: train the tiny AudioLDM2 on the train split's music (tiny profile only).

With the real backbone it writes a reference to cvssp/audioldm2-music instead, so later stages
load either through the same `load_backbone(prior.out_dir)`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from art2mus.config import load_params
from art2mus.data.schema import SPLITS_TABLE, TRACKS_MANIFEST
from art2mus.io import atomic_path, read_table, write_json_atomic, write_table_atomic
from art2mus.models.loader import write_backbone_reference
from art2mus.models.tiny import folder_sha256, save_tiny_backbone
from art2mus.stages import OpenRun
from art2mus.training.prior import train_prior

METRICS = Path("models/prior_metrics.json")
LOSS_PLOT = Path("models/plots/prior_loss.csv")


def train_track_paths(fma_dir: Path, manifests: Path) -> list[str]:
    """Audio files of the train split's tracks only: no stage before evaluation sees test music."""
    splits = read_table(SPLITS_TABLE)
    tracks = read_table(manifests / TRACKS_MANIFEST).set_index("track_id")
    train_ids = splits.loc[splits["split"] == "train", "track_id"]
    return [str(fma_dir / tracks.loc[track_id, "path"]) for track_id in train_ids]


def run(params_file: str | Path, open_run: OpenRun) -> None:
    """Train the tiny prior into prior.out_dir, or write the real backbone's reference there."""
    params = load_params(params_file)
    out = Path(params.prior.out_dir)
    logged = {"prior": params.prior.model_dump(mode="json"), "backbone": params.backbone.model_dump(mode="json")}
    with open_run("prior", logged, params.tracking.experiment) as tracked:
        if params.backbone.profile != "tiny":
            with atomic_path(out) as tmp:
                write_backbone_reference(params.backbone, tmp)
            write_json_atomic({"trained": 0, "profile": params.backbone.profile}, METRICS)
            write_table_atomic(pd.DataFrame({"step": [], "loss": []}), LOSS_PLOT.with_suffix(".csv"))
            return
        paths = train_track_paths(Path(params.ingest.fma_dir), Path(params.ingest.out_dir))
        result = train_prior(paths, params.audio, params.backbone, params.prior,
                             log_loss=lambda step, loss: tracked.log_metrics({"prior_loss": loss}, step=step))
        with atomic_path(out) as tmp:
            save_tiny_backbone(result.backbone, tmp)
        digest = folder_sha256(out)  # the saved folder's files: the prior's identity is tiny@<digest>
        first, last = result.losses[:10], result.losses[-10:]
        metrics = {"trained": 1, "tracks": len(paths), "steps": len(result.losses), "seconds": result.seconds,
                   "loss_first10": sum(first) / len(first), "loss_last10": sum(last) / len(last)}
        write_json_atomic({**metrics, "folder_sha256": digest}, METRICS)
        write_table_atomic(pd.DataFrame({"step": range(len(result.losses)), "loss": result.losses}), LOSS_PLOT)
        tracked.log_metrics(metrics)
        tracked.set_tags({"prior.folder_sha256": digest})
