"""The `retrain` flow: sync data, reproduce the pipeline, enforce the gates, register, decide, promote.

Each step is a Prefect task a few lines long; the work is the library's, so the flow adds scheduling,
retries, timeouts, mutual exclusion and the order of the steps, never a second implementation:

- DVC as a subprocess, its remote probed, `dvc repro`'s output parsed: art2mus.orchestration.dvc_runner
  (`dvc repro` skips what is unchanged).
- One retry policy (art2mus.orchestration.retries): retries with exponential backoff only where a
  failure can be transient (`dvc pull`, the tracking store); none where it cannot (a failed gate, a
  failing stage, a rejected model). Every task and the flow have timeouts.
- Two retrains never overlap (art2mus.locks): a Prefect global concurrency limit (`art2mus-retrain`, one
  slot, created on first use) when a Prefect server is configured, and always a file lock on the
  project (DVC's repo lock and SQLite would otherwise fight).
- Idempotent: registration goes by identity (weights, code, data: `register_model`), so a run with
  nothing changed registers nothing and says so; the verdict (art2mus.tracking.verdict) is not decided
  again on the same inputs, and a version that was champion before is never re-promoted automatically.
- Every stage's MLflow run nests under one `retrain` run (ART2MUS_PARENT_RUN_ID): art2mus.orchestration.parent_run.
- A step that takes more than one library call (the gates' reports, registering, the model card, the
  change report) is one call of art2mus.orchestration.steps.
- A registered version gets its model card and licence summary once (art2mus.tracking.modelcard);
  the licence policy (`promotion.intended_use`) is checked before any scoring and again before
  promoting; every run publishes a change report against the champion (art2mus.tracking.changes).

Run as `python -m flows.retrain run|serve ...` in the project root (`main`): `art2mus retrain` and
`art2mus schedule` start it so, as DVC starts `python -m stages.<name>`; the library never imports flows.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from art2mus.alerts import notify_failure
from art2mus.config import Params, load_params
from art2mus.data.schema import GATES
from art2mus.env import configure_environment, project_root
from art2mus.errors import Art2MusError
from art2mus.locks import concurrency_slot, file_lock, prefect_server_url
from art2mus.orchestration import dvc_runner
from art2mus.orchestration.console import (
    flow_errors,
    report_failure,
    retrain_arguments,
    setup_flow_logging,
    start_local_prefect_api,
)
from art2mus.orchestration.dvc_runner import ReproFailed, ReproReport
from art2mus.orchestration.outcome import RetrainOutcome, conclude, console_lines, summary_markdown
from art2mus.orchestration.parent_run import close_retrain_run, environment, open_retrain_run
from art2mus.orchestration.retries import task_options
from art2mus.orchestration.steps import (
    change_artifact,
    document_with_licences,
    failed_summaries,
    gate_failure,
    gate_reports,
    passed_headlines,
    register_trained_model,
)
from art2mus.quality.report import failed_gates_markdown
from art2mus.tracking.changes import ARTIFACT_KEY
from art2mus.tracking.client import registry_client
from art2mus.tracking.registry import RegisteredVersion, champion_version, require_registry
from art2mus.tracking.runs import PARENT_RUN_ENV
from art2mus.tracking.verdict import Verdict, decide_version, promote_version
from art2mus.workspace import RETRAIN_LOCK, tracking_uri

CONCURRENCY_LIMIT = "art2mus-retrain"
DEFAULT_WAIT_SECONDS = 3600.0  # how long a retrain waits for another one to finish

# Timeouts (seconds). Training on the real backbone can take hours; override per deployment with
# `retrain.with_options(timeout_seconds=...)` or a task's `.with_options(...)`.
FLOW_TIMEOUT = 48 * 3600
SYNC_TIMEOUT = 3600
REPRO_TIMEOUT = 36 * 3600
GATES_TIMEOUT = 300
TRACKING_TIMEOUT = 300
REGISTER_TIMEOUT = 1800
DECIDE_TIMEOUT = 4 * 3600
PROMOTE_TIMEOUT = 1800


class RetrainBusy(Art2MusError):
    """Another retrain holds the project (or the concurrency limit) for longer than we wait."""


@task(name="sync data", **task_options(SYNC_TIMEOUT, retries=3, first_delay=10))
def sync_data(root: Path) -> str:
    """`dvc pull` from the default remote when it is a service that answers; otherwise say why not."""
    return dvc_runner.pull(root, get_run_logger())


@task(name="reproduce", **task_options(REPRO_TIMEOUT))
def reproduce(root: Path) -> ReproReport:
    """`dvc repro`: run what changed, skip the rest; a failing stage fails the task (no retries)."""
    return dvc_runner.repro(root, get_run_logger())


@task(name="quality gates", **task_options(GATES_TIMEOUT))
def enforce_gates(root: Path, failed_stage: str | None = None) -> list[str]:
    """Fail when a gate's report says it failed (its summary becomes a Prefect markdown artifact); else the headlines.

    After the gate stage `failed_stage` failed only its own report counts. DVC removes a stage's outputs before
    running it, so no report means the stage stopped before checking anything: no verdict ([]), the caller raises
    the stage's failure."""
    reports = gate_reports(root, failed_stage)
    if summaries := failed_summaries(reports):
        create_markdown_artifact(failed_gates_markdown(summaries), key="quality-gates",
                                 description=f"GX summary of {', '.join(summaries)}")
        raise gate_failure(summaries)
    if failed_stage is not None:
        return []
    headlines = passed_headlines(root, reports)
    for headline in headlines:
        get_run_logger().info("%s", headline)
    return headlines


@task(name="open tracking run", **task_options(TRACKING_TIMEOUT, retries=3))
def open_tracking_run(root: Path, experiment: str, flow_run: str) -> str:
    """The flow's MLflow run; the stages' and the registration's runs nest under it."""
    run_id, uri = open_retrain_run(root, experiment, flow_run)
    get_run_logger().info("retrain: MLflow run %s (%s)", run_id, uri)
    return run_id


@task(name="close tracking run", **task_options(TRACKING_TIMEOUT, retries=3))
def close_tracking_run(root: Path, run_id: str, outcome: RetrainOutcome | None, error: str | None) -> None:
    """Tag the flow's MLflow run with the outcome (or the error) and end it."""
    close_retrain_run(root, run_id, outcome, error)


@task(name="register", **task_options(REGISTER_TIMEOUT, retries=2))
def register(root: Path, experiment: str) -> RegisteredVersion:
    """Register models/art2mus, or find the version that already has its identity (DVC skipped train)."""
    return register_trained_model(root, experiment, registry_client(root), get_run_logger())


@task(name="model card", **task_options(REGISTER_TIMEOUT, retries=2))
def document(root: Path, version: str, params: Params) -> bool:
    """The version's model card and licence summary (once per version: a re-run writes nothing)."""
    return document_with_licences(root, version, params, registry_client(root), get_run_logger())


@task(name="decide", **task_options(DECIDE_TIMEOUT, retries=1, first_delay=10))
def decide_candidate(root: Path, version: str, params: Params) -> Verdict:
    """Challenger vs champion on the same items and draws (first run: floors only); the verdict
    becomes the version's `validation_status` and `decision.*` tags."""
    return decide_version(root, version, params, registry_client(root), get_run_logger())


@task(name="promote", **task_options(PROMOTE_TIMEOUT, retries=1, first_delay=10))
def promote_candidate(root: Path, version: str, verdict: Verdict, by: str, params: Params | None = None) -> str:
    """Smoke-test the version's pyfunc (load, generate once), then move `champion` to it in one call.

    With `params`, the licence policy is checked first (a verdict may predate it)."""
    return promote_version(root, version, verdict, by, params, registry_client(root), get_run_logger())


@task(name="change report", **task_options(TRACKING_TIMEOUT, retries=2))
def report_changes(root: Path, version: str, champion: str | None, params: Params, run_id: str | None) -> str:
    """What changed since the champion the candidate was judged against: a Prefect markdown artifact
    and `change_report.md` / `.json` on the flow's MLflow run."""
    artifact = change_artifact(root, version, champion, params, run_id, registry_client(root), get_run_logger())
    create_markdown_artifact(artifact.markdown, key=ARTIFACT_KEY, description=artifact.description)
    return artifact.markdown if artifact.made else ""


@contextlib.contextmanager
def project_lock(root: Path, wait_seconds: float, logger) -> Iterator[None]:
    """Hold the project's retrain lock (waiting up to `wait_seconds`), or refuse clearly."""
    path = root / RETRAIN_LOCK
    with file_lock(path, wait_seconds, RetrainBusy(f"another retrain is running in {root} (it holds {path}); waited "
                                                   f"{wait_seconds:.0f} s; try again when it has finished"), logger):
        yield


@contextlib.contextmanager
def retrain_slot(name: str, wait_seconds: float, logger) -> Iterator[None]:
    """One slot of the Prefect concurrency limit `name` when a Prefect server is configured."""
    if not prefect_server_url():
        logger.info("Prefect runs ephemerally (no PREFECT_API_URL): the concurrency limit %r needs a Prefect server; "
                    "the project lock keeps retrains apart", name)
    with concurrency_slot(name, wait_seconds, RetrainBusy(f"the Prefect concurrency limit {name!r} stayed full for "
                                                          f"{wait_seconds:.0f} s (another retrain is running)"), logger):
        yield


@flow(name="retrain", timeout_seconds=FLOW_TIMEOUT, log_prints=False, validate_parameters=True,
      on_failure=[notify_failure], on_crashed=[notify_failure])  # alerts: art2mus/alerts.py
def retrain(project_dir: str = ".", wait_seconds: float = DEFAULT_WAIT_SECONDS) -> RetrainOutcome:
    """Sync data, reproduce the pipeline, enforce the gates, register, decide, promote."""
    from prefect.runtime import flow_run

    logger = get_run_logger()
    root = Path(project_dir).resolve()
    load_params(root / "params.yaml")  # a bad params.yaml fails here, before waiting for anything
    with retrain_slot(CONCURRENCY_LIMIT, wait_seconds, logger), project_lock(root, wait_seconds, logger):
        params = load_params(root / "params.yaml")  # as it is once this retrain has the project
        with environment({"MLFLOW_TRACKING_URI": tracking_uri(root)}):
            require_registry(registry_client(root))  # a store still under the former name: say so before dvc repro
            run_id = open_tracking_run(root, params.tracking.experiment, str(flow_run.name))
            outcome, error = None, None
            try:
                with environment({PARENT_RUN_ENV: run_id}):
                    outcome = retrain_steps(root, params, f"art2mus retrain flow ({flow_run.name})")
            except BaseException as failure:
                error = f"{type(failure).__name__}: {failure}"
                raise
            finally:
                close_tracking_run(root, run_id, outcome, error)
    logger.info("retrain: %s", outcome.message)
    return outcome


def reproduce_or_explain(root: Path) -> ReproReport:
    """`dvc repro`'s report; when a gate's stage failed, the gate's verdict (GateFailed with its summary)."""
    try:
        return reproduce(root)
    except ReproFailed as error:
        failure = error  # raised below, outside the except clause: a GateFailed is not "during handling" it
    if failure.stage in GATES:
        enforce_gates(root, failure.stage)
    raise failure  # the stage stopped before its verdict (bad input), or another stage or DVC failed


def retrain_steps(root: Path, params: Params, by: str) -> RetrainOutcome:
    """The tasks in order; `by` is who promotions are recorded as made by."""
    sync_data(root)
    report = reproduce_or_explain(root)
    enforce_gates(root)
    registered = register(root, params.tracking.experiment)
    document(root, registered.version, params)
    verdict = decide_candidate(root, registered.version, params)
    promoted = False
    if verdict.promote:
        promote_candidate(root, registered.version, verdict, by, params)
        promoted = True
    report_changes(root, registered.version, verdict.champion, params, os.environ.get(PARENT_RUN_ENV))
    outcome = conclude(registered, verdict, promoted, champion_version(registry_client(root)), report,
                       params.promotion.require_approval)
    create_markdown_artifact(summary_markdown(outcome), key="retrain-summary", description=outcome.message[:500])
    return outcome


def run_now(root: Path, wait_seconds: float) -> None:
    """One retrain, then what it did on stdout (what `art2mus retrain` prints before the champion)."""
    started = time.monotonic()
    outcome = retrain(project_dir=str(root), wait_seconds=wait_seconds)
    for line in console_lines(outcome, time.monotonic() - started):
        print(line)


def serve_on_schedule(root: Path, name: str, cron: str, timezone: str, wait_seconds: float) -> None:
    """Serve the flow as deployment `name` on the Prefect server of PREFECT_API_URL until interrupted."""
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.schedules import Cron

    try:
        CronSchedule(cron=cron, timezone=timezone)  # checks both; prefect.schedules.Cron does not
    except ValueError as error:
        raise Art2MusError(f"--cron {cron!r} / --timezone {timezone!r}: {error}") from None
    print(f"schedule: serving {name} ({cron} {timezone}) on {os.environ.get('PREFECT_API_URL')}; Ctrl-C stops it",
          flush=True)
    retrain.serve(name=name, schedule=Cron(cron, timezone=timezone),
                  parameters={"project_dir": str(root), "wait_seconds": wait_seconds}, tags=["art2mus"],
                  print_starting_message=False)


def main(argv: Sequence[str] | None = None) -> int:
    """Run or serve the flow; expected errors end as one line on stderr and exit code 1, not a traceback."""
    options = retrain_arguments(argv, DEFAULT_WAIT_SECONDS)
    setup_flow_logging(options.command == "run" and options.quiet)
    root = configure_environment(project_root())  # with a start-up time for Prefect fit for a busy machine
    command = "retrain" if options.command == "run" else "schedule"
    try:
        if options.command == "run":
            start_local_prefect_api()
            run_now(root, options.wait)
        else:
            serve_on_schedule(root, options.name, options.cron, options.timezone, options.wait)
    except flow_errors() as error:
        return report_failure(command, error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
