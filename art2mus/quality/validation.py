"""Run Great Expectations suites on in-memory tables: one ephemeral context per gate call."""

from __future__ import annotations

import logging
import os
from types import ModuleType
from typing import Any

from art2mus.quality.report import GateReport, TableCheck, summarize

logger = logging.getLogger(__name__)

# SUMMARY results: counts plus the first 20 unexpected values and their row positions. We do not
# ask GX for `unexpected_index_column_names`: GX then reads every unexpected row one cell at a time
# (about 3 s per 100k failing rows per expectation) before keeping the first few; the summary
# looks the keys up itself from the row positions instead.
RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": 20}


def import_great_expectations() -> tuple[ModuleType, ModuleType]:
    """Import GX lazily, with analytics off: returns (great_expectations, its expectations)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    import great_expectations.expectations as gxe

    return gx, gxe


def expectations_module() -> ModuleType:
    """`great_expectations.expectations`, imported on first use."""
    return import_great_expectations()[1]


def make_ephemeral_context() -> Any:
    """An in-memory GX context with progress bars off (they would write to stderr)."""
    gx, _ = import_great_expectations()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def run_table_checks(gate: str, checks: list[TableCheck]) -> dict[str, dict[str, Any]]:
    """Validate every table with its suite in one ephemeral context; JSON results per table."""
    gx, _ = import_great_expectations()
    context = make_ephemeral_context()
    datasource = context.data_sources.add_pandas(gate)
    results: dict[str, dict[str, Any]] = {}
    for check in checks:
        asset = datasource.add_dataframe_asset(check.name)
        batch_definition = asset.add_batch_definition_whole_dataframe("whole")
        # Row positions as the index, so GX's unexpected indices are positions in check.frame.
        frame = check.frame.reset_index(drop=True)
        batch = batch_definition.get_batch(batch_parameters={"dataframe": frame})
        suite = gx.ExpectationSuite(name=f"{gate}.{check.name}", expectations=check.expectations)
        validation = batch.validate(suite, result_format=dict(RESULT_FORMAT))
        results[check.name] = validation.to_json_dict()
        logger.debug("%s: %s %s", gate, check.name, "passed" if validation.success else "FAILED")
    return results


def build_gate_report(gate: str, checks: list[TableCheck]) -> GateReport:
    """Run the gate's table checks and gather them into one report."""
    gx, _ = import_great_expectations()
    suites = run_table_checks(gate, checks)
    outcomes = [item["success"] for suite in suites.values() for item in suite["results"]]
    failed = outcomes.count(False)
    result = {
        "gate": gate,
        "success": failed == 0,
        "great_expectations_version": gx.__version__,
        "statistics": {
            "evaluated_expectations": len(outcomes),
            "successful_expectations": len(outcomes) - failed,
            "unsuccessful_expectations": failed,
        },
        "suites": suites,
    }
    report = GateReport(gate, failed == 0, summarize(gate, checks, suites), result)
    logger.info("%s", report.summary.split("\n")[0])
    return report
