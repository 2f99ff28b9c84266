"""Gate reports: the tables a gate checks, the full GX results as JSON and a short summary a person can act on.

A gate's report, `data/reports/<gate>.json`, is GX's results with the summary the stage prints next to
them (top-level key `summary`): readers (the retrain flow) take the summary from there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from art2mus.data.schema import REPORTS_DIR
from art2mus.errors import Art2MusError
from art2mus.io import read_json, write_json_atomic

logger = logging.getLogger(__name__)

MAX_EXAMPLES = 5  # offending values shown per failed expectation (the JSON keeps more)
MAX_SET_SHOWN = 8  # longer value sets are shown by their size only
MAX_LABEL_WIDTH = 40
SUMMARY_KEY = "summary"  # the report's summary, next to the GX results' own keys


@dataclass
class TableCheck:
    """A table, the expectations it must meet, and how to point at its offending rows."""

    name: str  # e.g. "artworks" or "splits.artist_splits"; labels the suite and the summary
    frame: pd.DataFrame
    expectations: list[Any]  # great_expectations.expectations.Expectation instances
    key: str | None = None  # column that identifies a row in the examples (artwork_id, artist, ...)
    describe: Callable[[pd.Series], str] | None = None  # one sentence for an offending row


@dataclass
class GateReport:
    """The outcome of one quality gate: pass/fail, a short summary and the full GX results."""

    name: str
    success: bool
    summary: str
    result: dict[str, Any]
    results_path: str | None = None

    def write(self, path: str | Path) -> None:
        """Point the summary at the file, then write the full results and the summary as JSON (atomically)."""
        self.results_path = str(path)
        statistics = self.result["statistics"]
        lines = self.summary.split("\n")
        lines[0] = headline(
            self.name,
            statistics["unsuccessful_expectations"],
            statistics["evaluated_expectations"],
            self.results_path,
        )
        self.summary = "\n".join(lines)
        write_json_atomic({**self.result, SUMMARY_KEY: self.summary}, path)


class GateRun(Protocol):
    """What a gate logs to its stage's tracking run (art2mus.tracking.runs.StageRun has it)."""

    def log_artifact(self, path: str | Path) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float]) -> None: ...


class GateFailed(Art2MusError):
    """A quality gate found bad data; the message is the gate's summary (a retrain's: every failed gate's).

    `report` is the gate's report when the gate itself raised it (None when a retrain read the verdicts back)."""

    def __init__(self, summary: str, report: GateReport | None = None) -> None:
        super().__init__(summary)
        self.report = report


def enforce(report: GateReport, path: str | Path, tracked: GateRun | None = None) -> GateReport:
    """Write the gate's report (pass or fail) and log it to the stage's run, then raise GateFailed if it failed."""
    report.write(path)
    if tracked is not None:
        tracked.log_artifact(path)
        tracked.log_metrics({"gate_passed": int(report.success)})
    if not report.success:
        raise GateFailed(report.summary, report)
    logger.info("%s", report.summary)
    return report


def headline(name: str, failed: int, total: int, path: str | None = None) -> str:
    """First summary line: the gate, how many expectations failed, where the full results are."""
    where = f" (full results: {path})" if path else ""
    if failed:
        return f"{name}: FAILED {failed} of {total} expectations{where}"
    return f"{name}: passed all {total} expectations{where}"


def results_path(root: Path, gate: str) -> Path:
    """Where the gate stage writes its full GX results (`data/reports/<gate>.json`)."""
    return root / REPORTS_DIR / f"{gate}.json"


def read_results(root: Path, gate: str) -> dict[str, Any] | None:
    """The gate's full GX results as its stage wrote them, None when it has not run."""
    path = results_path(root, gate)
    return read_json(path) if path.is_file() else None


def read_report(root: Path, gate: str) -> GateReport | None:
    """The gate's report as its stage wrote it (results and summary), None when it has not run."""
    results = read_results(root, gate)
    if results is None:
        return None
    result = {key: value for key, value in results.items() if key != SUMMARY_KEY}
    # A report written before reports kept their summary has no SUMMARY_KEY: its headline stands in.
    summary = results.get(SUMMARY_KEY) or results_headline(gate, result)
    return GateReport(gate, bool(result["success"]), summary, result, str(results_path(root, gate)))


def results_headline(gate: str, results: dict[str, Any] | None) -> str:
    """The headline of a gate's written results (without where they are: the caller says)."""
    if results is None:
        return f"{gate}: no report"
    statistics = results["statistics"]
    return headline(gate, 0 if results["success"] else statistics["unsuccessful_expectations"],
                    statistics["evaluated_expectations"])


def failed_gates_markdown(summaries: dict[str, str]) -> str:
    """A retrain's account of the gates that failed (gate -> summary), for a person reading the run."""
    sections = [f"## {gate}\n\n```text\n{summary}\n```\n\nFull GX results: `{REPORTS_DIR}/{gate}.json`"
                for gate, summary in summaries.items()]
    return (f"# Quality gate failed: {', '.join(summaries)}\n\nThe retrain stopped before registering anything.\n\n"
            + "\n\n".join(sections))


def summarize(gate: str, checks: list[TableCheck], results: dict[str, dict[str, Any]]) -> str:
    """The headline plus one aligned line (and optional detail lines) per failed expectation."""
    failures: list[tuple[str, str, list[str]]] = []
    total = 0
    n_failed = 0
    for check in checks:
        items = results[check.name]["results"]
        failed = [item for item in items if not item["success"]]
        total += len(items)
        n_failed += len(failed)
        # Table-level expectations (columns, row count) first: a missing column explains the rest.
        failed.sort(key=lambda item: is_column_expectation(item["expectation_config"]))
        unrunnable = [item for item in failed if on_missing_column(check, item)]
        failures.extend(describe_failure(check, item) for item in failed if item not in unrunnable)
        if unrunnable:
            failures.append(describe_unrunnable(check, unrunnable))
    lines = [headline(gate, n_failed, total)]
    width = min(max((len(label) for label, _, _ in failures), default=0), MAX_LABEL_WIDTH)
    for label, text, details in failures:
        lines.append(f"  {label:<{width}}  {text}")
        lines.extend(f"    {detail}" for detail in details)
    return "\n".join(lines)


def expectation_column(config: dict[str, Any]) -> str | None:
    """The column an expectation is about (the first of a column pair), None for table-level."""
    kwargs = config["kwargs"]
    return kwargs.get("column") or kwargs.get("column_A")


def is_column_expectation(config: dict[str, Any]) -> bool:
    return expectation_column(config) is not None


def on_missing_column(check: TableCheck, item: dict[str, Any]) -> bool:
    """True when GX could not run the expectation because its column is not in the table."""
    column = expectation_column(item["expectation_config"])
    return column is not None and column not in check.frame.columns


def describe_unrunnable(
    check: TableCheck, items: list[dict[str, Any]]
) -> tuple[str, str, list[str]]:
    """One line for all the expectations that could not run on missing columns."""
    columns = sorted({str(expectation_column(item["expectation_config"])) for item in items})
    text = f"{len(items)} expectations could not run on the missing columns {columns}"
    return check.name, text, []


def describe_failure(check: TableCheck, item: dict[str, Any]) -> tuple[str, str, list[str]]:
    """(table.column label, 'expectation: what was found', detail lines) for one failed result."""
    config = item["expectation_config"]
    column = expectation_column(config)
    label = f"{check.name}.{column}" if column else check.name
    text = f"{expectation_text(config)}: {outcome_text(check, item, column)}"
    details = offending_row_descriptions(check, item)
    return label, text, details


def expectation_text(config: dict[str, Any]) -> str:
    """What the expectation asks for, in a few words (its description when it has one)."""
    if config.get("description"):
        return config["description"]
    kind = config["type"]
    kwargs = config["kwargs"]
    if kind == "expect_column_values_to_be_between":
        return f"expect values {bounds_text(kwargs.get('min_value'), kwargs.get('max_value'))}"
    if kind == "expect_table_row_count_to_be_between":
        return f"expect {bounds_text(kwargs.get('min_value'), kwargs.get('max_value'))} rows"
    if kind == "expect_column_values_to_be_in_set":
        return f"expect values in {set_text(kwargs['value_set'])}"
    if kind == "expect_column_values_to_match_regex":
        return f"expect values to match {kwargs['regex']}"
    if kind == "expect_column_values_to_be_of_type":
        return f"expect type {kwargs['type_']}"
    if kind == "expect_column_values_to_be_in_type_list":
        return f"expect type in {kwargs['type_list']}"
    if kind == "expect_table_columns_to_match_set":
        return f"expect columns {set_text(kwargs['column_set'])}"
    words = kind.removeprefix("expect_").removeprefix("column_").removeprefix("table_")
    return "expect " + words.replace("_", " ")


def bounds_text(low: Any, high: Any) -> str:
    """'between 1 and 20000', 'at least 16' or 'at most 0.05'."""
    if low is not None and high is not None:
        return f"between {low:g} and {high:g}"
    if low is not None:
        return f"at least {low:g}"
    return f"at most {high:g}"


def set_text(values: list[Any]) -> str:
    """The set itself when short, else its size."""
    if len(values) <= MAX_SET_SHOWN:
        try:
            return repr(sorted(values))
        except TypeError:  # mixed types
            return repr(sorted(values, key=str))
    return f"a set of {len(values)} values"


def outcome_text(check: TableCheck, item: dict[str, Any], column: str | None) -> str:
    """What GX found: counts and examples, a missing column, or the error that stopped it."""
    message = exception_message(item.get("exception_info") or {})
    if message is not None:
        return f"could not run: {message}"
    result = item.get("result") or {}
    if "unexpected_count" in result:
        counts = f"{result['unexpected_count']} of {result['element_count']} rows unexpected"
        if check.describe is not None:
            return counts
        examples = examples_text(check, result, column)
        return f"{counts}, e.g. {examples}" if examples else counts
    mismatched = (result.get("details") or {}).get("mismatched") or {}
    if mismatched.get("missing"):
        return f"missing {sorted(mismatched['missing'])}"
    return f"observed {result.get('observed_value')!r}"


def unexpected_positions(result: dict[str, Any]) -> list[int]:
    """Row positions (in the validated table) of the first unexpected values."""
    index = result.get("partial_unexpected_index_list") or []
    return [int(position) for position in index[:MAX_EXAMPLES] if isinstance(position, int)]


def examples_text(check: TableCheck, result: dict[str, Any], column: str | None) -> str:
    """The first offending values, with the keys (or row numbers) of the rows they sit in."""
    values = list(result.get("partial_unexpected_list") or [])[:MAX_EXAMPLES]
    if not values:
        return ""
    positions = unexpected_positions(result)
    if check.key is not None and check.key != column and check.key in check.frame.columns:
        keys = check.frame[check.key].iloc[positions].tolist()
        return f"{values!r} ({check.key}: {keys!r})"
    if positions:
        return f"{values!r} (rows {positions})"
    return repr(values)


def offending_row_descriptions(check: TableCheck, item: dict[str, Any]) -> list[str]:
    """One sentence per offending row, for small tables that know how to describe a row."""
    if check.describe is None:
        return []
    result = item.get("result") or {}
    positions = unexpected_positions(result)
    lines = [check.describe(row) for _, row in check.frame.iloc[positions].iterrows()]
    more = int(result.get("unexpected_count") or 0) - len(lines)
    if lines and more > 0:
        lines.append(f"... and {more} more")
    return lines


def exception_message(info: dict[str, Any]) -> str | None:
    """The message of the exception GX caught while running an expectation, if any."""
    entries = [info] + [value for value in info.values() if isinstance(value, dict)]
    for entry in entries:
        if entry.get("raised_exception"):
            message = str(entry.get("exception_message") or "unknown error")
            return message.removeprefix("Error: ").strip()
    return None

