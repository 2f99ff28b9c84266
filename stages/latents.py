"""Stage `latents`: latents of every paired track's crop with the prior's codec (or AudioLDM2's VAE).

DVC runs `python -m stages.latents`; the stage's body is art2mus.stages.latents.run (the library)."""

from art2mus.config import PARAMS_FILE
from art2mus.stages import run_stage
from art2mus.stages.latents import run
from art2mus.tracking import stage_run


def main() -> None:
    run(PARAMS_FILE, stage_run)


if __name__ == "__main__":
    run_stage("latents", main)
