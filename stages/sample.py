"""Stage `sample`: synthesise the embedded default dataset in the real ArtGraph and FMA layouts."""

from pathlib import Path

from art2mus.config import load_params
from art2mus.data.sample import make_sample
from art2mus.stage import run_stage
from art2mus.tracking import stage_run


def main() -> None:
    params = load_params()
    with stage_run("sample", params.sample, params.tracking.experiment) as run:
        summary = make_sample(params.sample, params.audio, Path(params.sample.out_dir))
        run.log_dict(summary, "sample_summary.json")


if __name__ == "__main__":
    run_stage("sample", main)
