"""Stage `features`: frozen image and audio embeddings of every artwork and track (cached shards)."""

from __future__ import annotations

from pathlib import Path

from art2mus.config import load_params
from art2mus.data.schema import ARTWORKS_MANIFEST, TRACKS_MANIFEST
from art2mus.errors import Art2MusError
from art2mus.features.embeddings import FAILED_FILE, compute_features
from art2mus.io import read_table
from art2mus.stages import OpenRun


def run(params_file: str | Path, open_run: OpenRun) -> None:
    """Embed the manifests' artworks and tracks into features.out_dir."""
    params = load_params(params_file)
    config = params.features
    audio = params.audio
    logged = {**config.model_dump(mode="json"),
              "audio": {"sample_rate": audio.sample_rate, "crop_offset_seconds": audio.crop_offset_seconds,
                        "crop_seconds": audio.crop_seconds}}
    with open_run("features", logged, params.tracking.experiment) as tracked:
        manifests = Path(params.ingest.out_dir)
        for name in (ARTWORKS_MANIFEST, TRACKS_MANIFEST):
            if not (manifests / name).is_file():
                raise Art2MusError(f"{manifests / name} not found: run the ingest stage first")
        out_dir = Path(config.out_dir)
        summary = compute_features(
            read_table(manifests / ARTWORKS_MANIFEST),
            read_table(manifests / TRACKS_MANIFEST),
            Path(params.ingest.artgraph_dir),
            Path(params.ingest.fma_dir),
            out_dir,
            config,
            audio,
        )
        tracked.set_tags({"image_encoder_id": summary.pop("image_encoder_id"),
                          "audio_embedder_id": summary.pop("audio_embedder_id")})
        tracked.log_metrics(summary)
        tracked.log_artifact(out_dir / FAILED_FILE)
