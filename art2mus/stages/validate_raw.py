"""Stage `validate_raw`: the data-quality gate on the ingest manifests, before anything pairs."""

from __future__ import annotations

from pathlib import Path

from art2mus.config import load_params
from art2mus.data.schema import ARTWORKS_MANIFEST, QUARANTINE_MANIFEST, REPORTS_DIR, TRACKS_MANIFEST
from art2mus.io import read_table
from art2mus.quality import enforce, validate_raw
from art2mus.stages import OpenRun

REPORT = Path(REPORTS_DIR) / "validate_raw.json"


def run(params_file: str | Path, open_run: OpenRun) -> None:
    """Check the manifests, write the report; a failed gate raises."""
    params = load_params(params_file)
    manifests = Path(params.ingest.out_dir)
    with open_run("validate_raw", params.validate_raw, params.tracking.experiment) as tracked:
        report = validate_raw(
            read_table(manifests / ARTWORKS_MANIFEST),
            read_table(manifests / TRACKS_MANIFEST),
            read_table(manifests / QUARANTINE_MANIFEST),
            params.validate_raw,
        )
        report.write(REPORT)
        tracked.log_artifact(REPORT)
        tracked.log_metrics({"gate_passed": int(report.success)})
        enforce(report, REPORT)
