"""Stage `validate_raw`: the data-quality gate on the ingest manifests, before anything pairs.

DVC runs `python -m stages.validate_raw`; the stage's body is art2mus.stages.validate_raw.run (the library)."""

from art2mus.config import PARAMS_FILE
from art2mus.stages import run_stage
from art2mus.stages.validate_raw import run
from art2mus.tracking import stage_run


def main() -> None:
    run(PARAMS_FILE, stage_run)


if __name__ == "__main__":
    run_stage("validate_raw", main)
