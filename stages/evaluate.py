"""Stage `evaluate`: the trained model against its baselines on the test split (metrics, plots, report).

DVC runs `python -m stages.evaluate`; the stage's body is art2mus.stages.evaluate.run (the library)."""

from art2mus.config import PARAMS_FILE
from art2mus.stages import run_stage
from art2mus.stages.evaluate import run
from art2mus.tracking import stage_run


def main() -> None:
    run(PARAMS_FILE, stage_run)


if __name__ == "__main__":
    run_stage("evaluate", main)
