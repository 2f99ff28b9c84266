"""Stage `validate_splits`: the data-quality gate on pairs and splits (one-to-one, disjoint)."""

from __future__ import annotations

from pathlib import Path

from art2mus.config import load_params
from art2mus.data.schema import ARTWORKS_MANIFEST, SPLITS_TABLE, TRACKS_MANIFEST
from art2mus.io import read_table
from art2mus.quality import GateReport, validate_splits
from art2mus.quality.gates import gate_stage
from art2mus.stages import OpenRun


def run(params_file: str | Path, open_run: OpenRun) -> None:
    """Check the splits against the manifests, write data/reports/validate_splits.json; a failed gate raises."""
    params = load_params(params_file)
    manifests = Path(params.ingest.out_dir)

    def check() -> GateReport:
        return validate_splits(
            read_table(SPLITS_TABLE),
            read_table(manifests / ARTWORKS_MANIFEST),
            read_table(manifests / TRACKS_MANIFEST),
            params.validate_splits,
        )

    gate_stage("validate_splits", params.validate_splits, params.tracking.experiment, open_run, check)
