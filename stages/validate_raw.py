"""Stage `validate_raw`: the data-quality gate on the ingest manifests, before anything pairs."""

from pathlib import Path

from art2mus.config import load_params
from art2mus.data.schema import ARTWORKS_MANIFEST, QUARANTINE_MANIFEST, REPORTS_DIR, TRACKS_MANIFEST
from art2mus.io import read_table
from art2mus.quality import enforce, validate_raw
from art2mus.stage import run_stage
from art2mus.tracking import stage_run

REPORT = Path(REPORTS_DIR) / "validate_raw.json"


def main() -> None:
    params = load_params()
    manifests = Path(params.ingest.out_dir)
    with stage_run("validate_raw", params.validate_raw, params.tracking.experiment) as run:
        report = validate_raw(
            read_table(manifests / ARTWORKS_MANIFEST),
            read_table(manifests / TRACKS_MANIFEST),
            read_table(manifests / QUARANTINE_MANIFEST),
            params.validate_raw,
        )
        report.write(REPORT)
        run.log_artifact(REPORT)
        run.log_metrics({"gate_passed": int(report.success)})
        enforce(report, REPORT)


if __name__ == "__main__":
    run_stage("validate_raw", main)
