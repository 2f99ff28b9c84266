"""A gate's report keeps the summary its stage prints: written next to GX's results, read back typed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from art2mus.io import read_json, write_json_atomic
from art2mus.quality import GateFailed, GateReport, enforce
from art2mus.quality.gates import gate_stage
from art2mus.quality.report import headline, read_report, results_headline, results_path

DETAIL = "  artworks  expect at least 1000 artworks: observed 96"


def gate_report(gate: str, failed: int, total: int = 51) -> GateReport:
    """A report as build_gate_report makes one (no GX run): results, and a summary not yet pointed at a file."""
    result = {"gate": gate, "success": failed == 0, "great_expectations_version": "1.0",
              "statistics": {"evaluated_expectations": total, "successful_expectations": total - failed,
                             "unsuccessful_expectations": failed},
              "suites": {}}
    summary = "\n".join([headline(gate, failed, total), *([DETAIL] if failed else [])])
    return GateReport(gate, failed == 0, summary, result)


class FakeRun:
    """A stage's tracking run that remembers what was logged."""

    def __init__(self) -> None:
        self.artifacts: list[Path] = []
        self.metrics: dict[str, float] = {}

    def log_artifact(self, path: str | Path) -> None:
        self.artifacts.append(Path(path))

    def log_metrics(self, metrics: dict[str, float]) -> None:
        self.metrics.update(metrics)


def test_the_report_keeps_the_summary_next_to_the_gx_results(tmp_path: Path) -> None:
    report = gate_report("validate_raw", failed=1)
    path = results_path(tmp_path, "validate_raw")
    report.write(path)
    written = read_json(path)
    assert written == {**report.result, "summary": report.summary}
    assert written["summary"] == (f"validate_raw: FAILED 1 of 51 expectations (full results: {path})\n{DETAIL}")


def test_a_report_reads_back_as_written(tmp_path: Path) -> None:
    for gate, failed in (("validate_raw", 1), ("validate_splits", 0)):
        report = gate_report(gate, failed)
        report.write(results_path(tmp_path, gate))
        assert read_report(tmp_path, gate) == report
    assert read_report(tmp_path / "elsewhere", "validate_raw") is None  # the gate has not run


def test_a_report_written_before_reports_kept_their_summary_gives_its_headline(tmp_path: Path) -> None:
    result = gate_report("validate_raw", failed=3).result
    write_json_atomic(result, results_path(tmp_path, "validate_raw"))
    report = read_report(tmp_path, "validate_raw")
    assert report is not None and not report.success and report.result == result
    assert report.summary == results_headline("validate_raw", result) == "validate_raw: FAILED 3 of 51 expectations"


def test_enforce_writes_and_logs_the_report_then_raises_the_written_summary(tmp_path: Path) -> None:
    tracked = FakeRun()
    path = tmp_path / "validate_raw.json"
    with pytest.raises(GateFailed) as raised:
        enforce(gate_report("validate_raw", failed=1), path, tracked)
    assert str(raised.value) == read_json(path)["summary"]
    assert tracked.artifacts == [path] and tracked.metrics == {"gate_passed": 0}


def test_a_gate_stage_writes_its_report_under_data_reports_in_its_run(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # DVC runs a stage in the project root
    tracked = FakeRun()
    opened: list[tuple[str, Any, str]] = []

    @contextmanager
    def open_run(stage: str, params: Any, experiment: str) -> Iterator[FakeRun]:
        opened.append((stage, params, experiment))
        yield tracked

    report = gate_stage("validate_splits", None, "art2mus", open_run, lambda: gate_report("validate_splits", 0))
    assert report.success and opened == [("validate_splits", None, "art2mus")]
    assert tracked.artifacts == [Path("data/reports/validate_splits.json")] and tracked.metrics == {"gate_passed": 1}
    assert read_report(tmp_path, "validate_splits").summary == (
        "validate_splits: passed all 51 expectations (full results: data/reports/validate_splits.json)")
    with pytest.raises(GateFailed, match="validate_raw: FAILED 1 of 51"):
        gate_stage("validate_raw", None, "art2mus", open_run, lambda: gate_report("validate_raw", 1))
    assert json.loads((tmp_path / "data/reports/validate_raw.json").read_text())["success"] is False
