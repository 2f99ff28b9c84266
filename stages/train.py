"""Stage `train`: the image aligner through the frozen prior, from cached embeddings and latents.

DVC runs `python -m stages.train`; the stage's body is art2mus.stages.train.run (the library)."""

from art2mus.config import PARAMS_FILE
from art2mus.stages import run_stage
from art2mus.stages.train import run
from art2mus.tracking import stage_run


def main() -> None:
    run(PARAMS_FILE, stage_run)


if __name__ == "__main__":
    run_stage("train", main)
