"""Stage `prior`: train the tiny AudioLDM2 on the train split's music (tiny profile only).

DVC runs `python -m stages.prior`; the stage's body is art2mus.stages.prior.run (the library)."""

from art2mus.config import PARAMS_FILE
from art2mus.stages import run_stage
from art2mus.stages.prior import run
from art2mus.tracking import stage_run


def main() -> None:
    run(PARAMS_FILE, stage_run)


if __name__ == "__main__":
    run_stage("prior", main)
