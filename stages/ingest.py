"""Stage `ingest`: ArtGraph export + FMA copy -> artworks/tracks/quarantine manifests.

DVC runs `python -m stages.ingest`; the stage's body is art2mus.stages.ingest.run (the library)."""

from art2mus.config import PARAMS_FILE
from art2mus.stages import run_stage
from art2mus.stages.ingest import run
from art2mus.tracking import stage_run


def main() -> None:
    run(PARAMS_FILE, stage_run)


if __name__ == "__main__":
    run_stage("ingest", main)
