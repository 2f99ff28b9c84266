"""Stage `features`: frozen image and audio embeddings of every artwork and track (cached shards)."""

from pathlib import Path

from art2mus.config import load_params
from art2mus.data.schema import ARTWORKS_MANIFEST, TRACKS_MANIFEST
from art2mus.errors import Art2MusError
from art2mus.features.embeddings import FAILED_FILE, compute_features
from art2mus.io import read_table
from art2mus.stage import run_stage
from art2mus.tracking import stage_run


def main() -> None:
    params = load_params()
    config = params.features
    audio = params.audio
    logged = {**config.model_dump(mode="json"),
              "audio": {"sample_rate": audio.sample_rate, "crop_offset_seconds": audio.crop_offset_seconds,
                        "crop_seconds": audio.crop_seconds}}
    with stage_run("features", logged, params.tracking.experiment) as run:
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
        run.set_tags({"image_encoder_id": summary.pop("image_encoder_id"),
                      "audio_embedder_id": summary.pop("audio_embedder_id")})
        run.log_metrics(summary)
        run.log_artifact(out_dir / FAILED_FILE)


if __name__ == "__main__":
    run_stage("features", main)
