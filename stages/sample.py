"""Stage `sample`: synthesise the embedded default dataset in the real ArtGraph and FMA layouts.

DVC runs `python -m stages.sample`; the stage's body is art2mus.stages.sample.run (the library)."""

from art2mus.config import PARAMS_FILE
from art2mus.stages import run_stage
from art2mus.stages.sample import run
from art2mus.tracking import stage_run


def main() -> None:
    run(PARAMS_FILE, stage_run)


if __name__ == "__main__":
    run_stage("sample", main)
