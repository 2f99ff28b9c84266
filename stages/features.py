"""Stage `features`: frozen image and audio embeddings of every artwork and track (cached shards).

DVC runs `python -m stages.features`; the stage's body is art2mus.stages.features.run (the library)."""

from art2mus.config import PARAMS_FILE
from art2mus.stages import run_stage
from art2mus.stages.features import run
from art2mus.tracking import stage_run


def main() -> None:
    run(PARAMS_FILE, stage_run)


if __name__ == "__main__":
    run_stage("features", main)
