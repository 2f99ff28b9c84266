"""Stage `sample`: synthesise the embedded default dataset in the real ArtGraph and FMA layouts."""

from __future__ import annotations

from pathlib import Path

from art2mus.config import load_params
from art2mus.data.sample import make_sample
from art2mus.stages import OpenRun


def run(params_file: str | Path, open_run: OpenRun) -> None:
    """Write the sample to sample.out_dir and log its summary."""
    params = load_params(params_file)
    with open_run("sample", params.sample, params.tracking.experiment) as tracked:
        summary = make_sample(params.sample, params.audio, Path(params.sample.out_dir))
        tracked.log_dict(summary, "sample_summary.json")
