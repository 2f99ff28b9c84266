"""Stage `validate_splits`: the data-quality gate on pairs and splits (one-to-one, disjoint)."""

from pathlib import Path

from art2mus.config import load_params
from art2mus.data.schema import ARTWORKS_MANIFEST, REPORTS_DIR, SPLITS_TABLE, TRACKS_MANIFEST
from art2mus.io import read_table
from art2mus.quality import enforce, validate_splits
from art2mus.stage import run_stage
from art2mus.tracking import stage_run

REPORT = Path(REPORTS_DIR) / "validate_splits.json"


def main() -> None:
    params = load_params()
    manifests = Path(params.ingest.out_dir)
    with stage_run("validate_splits", params.validate_splits, params.tracking.experiment) as run:
        report = validate_splits(
            read_table(SPLITS_TABLE),
            read_table(manifests / ARTWORKS_MANIFEST),
            read_table(manifests / TRACKS_MANIFEST),
            params.validate_splits,
        )
        report.write(REPORT)
        run.log_artifact(REPORT)
        run.log_metrics({"gate_passed": int(report.success)})
        enforce(report, REPORT)


if __name__ == "__main__":
    run_stage("validate_splits", main)
