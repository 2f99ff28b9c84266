"""The retrain's steps that take more than one library call, so the flow's tasks stay wiring: reading the gates'
reports after `dvc repro`, registering the trained model, documenting a version, building the change report.

Each takes the task's logger; Prefect itself (artifacts, the run logger) stays in flows/retrain.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from art2mus.config import Params
from art2mus.data.schema import GATES, REPORTS_DIR
from art2mus.errors import Art2MusError
from art2mus.orchestration.dvc_runner import Logger
from art2mus.quality.report import GateFailed, GateReport, read_report, results_headline
from art2mus.tracking.changes import REPORT_FILE, REPORT_JSON, build_change_report, report_markdown
from art2mus.tracking.licences import summary_lines, version_licences
from art2mus.tracking.lineage import collect_lineage
from art2mus.tracking.modelcard import CARD_FILE, document_version
from art2mus.tracking.registry import MODEL_NAME, RegisteredVersion, get_version, register_model
from art2mus.workspace import MODEL_DIR, TRAIN_RECORD, TrainRecord


@dataclass(frozen=True)
class ChangeArtifact:
    """The change report as the flow publishes it: markdown, a one-line description, whether it was made."""

    markdown: str
    description: str
    made: bool


def gate_reports(root: Path, failed_stage: str | None) -> dict[str, GateReport | None]:
    """Every gate's report; after the gate stage `failed_stage` failed, only its own."""
    gates = [failed_stage] if failed_stage is not None else list(GATES)
    return {gate: read_report(root, gate) for gate in gates}


def failed_summaries(reports: dict[str, GateReport | None]) -> dict[str, str]:
    """gate -> summary (as the gate's stage printed it) of the reports that say the gate failed."""
    return {gate: report.summary for gate, report in reports.items() if report is not None and not report.success}


def gate_failure(summaries: dict[str, str]) -> GateFailed:
    """The error that stops a retrain whose gates failed, with their summaries."""
    return GateFailed(f"quality gate {', '.join(summaries)} failed; nothing was registered\n"
                      + "\n".join(summaries.values()))


def passed_headlines(root: Path, reports: dict[str, GateReport | None]) -> list[str]:
    """The passed gates' headlines; an error when a gate left no report after `dvc repro`."""
    if missing := [gate for gate, report in reports.items() if report is None]:
        raise Art2MusError(f"no report of the quality gate(s) {', '.join(missing)} under {root / REPORTS_DIR} "
                           "after dvc repro (is the stage still in dvc.yaml?)")
    return [results_headline(gate, report.result) for gate, report in reports.items() if report is not None]


def register_trained_model(root: Path, experiment: str, client, log: Logger) -> RegisteredVersion:
    """Register models/art2mus with the train stage's record, or find the version that already has its identity."""
    if not (root / TRAIN_RECORD).is_file():
        raise Art2MusError(f"{root / TRAIN_RECORD}: missing; the train stage writes it (run dvc repro)")
    record = TrainRecord.read(root / TRAIN_RECORD)
    registered = register_model(root / MODEL_DIR, record, collect_lineage(root), client=client,
                                experiment=experiment, root=root)
    if registered.created:
        log.info("register: %s version %s (weights %s, train run %s)", MODEL_NAME, registered.version,
                 record.weights_sha256[:12], record.mlflow_run_id)
    else:
        log.info("register: nothing new to register: %s version %s already has this model's identity "
                 "(weights %s, same code and data)", MODEL_NAME, registered.version, record.weights_sha256[:12])
    return registered


def document_with_licences(root: Path, version: str, params: Params, client, log: Logger) -> bool:
    """Write the version's model card once (True when written now) and log its licence summary."""
    written = document_version(root, version, params, client)
    if written:
        log.info("model card: wrote %s for version %s (MLflow run of the version)", CARD_FILE, version)
    else:
        log.info("model card: version %s already has its %s; nothing written", version, CARD_FILE)
    licences = version_licences(get_version(version, client).tags)
    for line in summary_lines(licences) if licences else []:
        log.info("licences: %s", line)
    return written


def change_artifact(root: Path, version: str, champion: str | None, params: Params, run_id: str | None, client,
                    log: Logger) -> ChangeArtifact:
    """The change report against `champion`, logged to the flow's run `run_id` as REPORT_FILE and REPORT_JSON;
    when it cannot be made, a note saying why (a report must not undo a retrain that is done)."""
    try:
        report = build_change_report(root, version, champion, list(params.promotion.metrics), client)
    except Art2MusError as error:
        log.warning("change report: not made: %s", error)
        return ChangeArtifact(f"# Change report: version {version}\n\nNot made: {error}\n",
                              "the change report could not be made", made=False)
    markdown = report_markdown(report, params.promotion.confidence)
    if run_id is not None:
        client.log_text(run_id, markdown, REPORT_FILE)
        client.log_dict(run_id, report.to_dict(), REPORT_JSON)
    log.info("change report: %s", report.headline)
    return ChangeArtifact(markdown, report.headline[:500], made=True)
