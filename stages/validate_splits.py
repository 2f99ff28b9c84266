"""Stage `validate_splits`: the data-quality gate on pairs and splits (one-to-one, disjoint).

DVC runs `python -m stages.validate_splits`; the stage's body is art2mus.stages.validate_splits.run (the library)."""

from art2mus.config import PARAMS_FILE
from art2mus.stages import run_stage
from art2mus.stages.validate_splits import run
from art2mus.tracking import stage_run


def main() -> None:
    run(PARAMS_FILE, stage_run)


if __name__ == "__main__":
    run_stage("validate_splits", main)
