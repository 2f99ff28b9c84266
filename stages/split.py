"""Stage `split`: artist-grouped, style-stratified train/val/test splits.

DVC runs `python -m stages.split`; the stage's body is art2mus.stages.split.run (the library)."""

from art2mus.config import PARAMS_FILE
from art2mus.stages import run_stage
from art2mus.stages.split import run
from art2mus.tracking import stage_run


def main() -> None:
    run(PARAMS_FILE, stage_run)


if __name__ == "__main__":
    run_stage("split", main)
