"""Stage `pair`: ArtSound pairs, one track per artwork, one-to-one.

DVC runs `python -m stages.pair`; the stage's body is art2mus.stages.pair.run (the library)."""

from art2mus.config import PARAMS_FILE
from art2mus.stages import run_stage
from art2mus.stages.pair import run
from art2mus.tracking import stage_run


def main() -> None:
    run(PARAMS_FILE, stage_run)


if __name__ == "__main__":
    run_stage("pair", main)
