"""Stage `validate_raw`: the data-quality gate on the ingest manifests, before anything pairs."""

from __future__ import annotations

from pathlib import Path

from art2mus.config import load_params
from art2mus.data.schema import ARTWORKS_MANIFEST, QUARANTINE_MANIFEST, TRACKS_MANIFEST
from art2mus.io import read_table
from art2mus.quality import GateReport, validate_raw
from art2mus.quality.gates import gate_stage
from art2mus.stages import OpenRun


def run(params_file: str | Path, open_run: OpenRun) -> None:
    """Check the manifests, write data/reports/validate_raw.json; a failed gate raises."""
    params = load_params(params_file)
    manifests = Path(params.ingest.out_dir)

    def check() -> GateReport:
        return validate_raw(
            read_table(manifests / ARTWORKS_MANIFEST),
            read_table(manifests / TRACKS_MANIFEST),
            read_table(manifests / QUARANTINE_MANIFEST),
            params.validate_raw,
        )

    gate_stage("validate_raw", params.validate_raw, params.tracking.experiment, open_run, check)
