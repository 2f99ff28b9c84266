"""The `retrain` flow: sync data, reproduce the pipeline, enforce the gates, register, decide, promote.

Each step is a Prefect task; the stages themselves stay DVC's (`dvc repro` skips what is unchanged),
so the flow adds scheduling, retries, timeouts, mutual exclusion and the registry decision, never a
second implementation of a stage.

- Retries with exponential backoff only where a failure can be transient (`dvc pull`, the tracking
  store); none where it cannot (a failed gate, a failing stage, a rejected model). Every task and
  the flow have timeouts.
- Two retrains never overlap: a Prefect global concurrency limit (`art2mus-retrain`, one slot, created
  on first use) when a Prefect server is configured, and always a file lock on the project (DVC's
  repo lock and SQLite would otherwise fight). In ephemeral mode every process starts its own
  temporary server whose leases die with it, so the limit is not used there (a killed run would hold
  its slot for ever); the file lock alone keeps retrains on one checkout apart.
- Idempotent: registration goes by identity (weights, code, data: `register_model`), so a run with
  nothing changed registers nothing and says so; a version already decided on the same inputs (the
  champion, the promotion rule, the evaluation params) is not decided again, and a version that was
  champion before is never re-promoted automatically (a rollback sticks).
- Every stage's MLflow run nests under one `retrain` run (ART2MUS_PARENT_RUN_ID).
- A registered version gets its model card and licence summary once (art2mus.tracking.modelcard);
  the licence policy (`promotion.intended_use`) is checked before any scoring and again before
  promoting; every run publishes a change report against the champion (art2mus.tracking.changes).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from art2mus.alerts import notify_failure
from art2mus.config import Params, load_params
from art2mus.data.schema import GATES, REPORTS_DIR
from art2mus.errors import Art2MusError
from art2mus.quality.report import GateFailed, failed_gates_markdown, read_results, results_headline
from art2mus.tracking.runs import PARENT_RUN_ENV, tracking_uri
from art2mus.workspace import (DECISION_KEY_TAG, MODEL_DIR, PROMOTED_AT_TAG, RETRAIN_LOCK, ROLLED_BACK_AT_TAG,
                               TRAIN_RECORD, VALIDATION_TAG, TrainRecord, VersionTags)

if TYPE_CHECKING:
    import pandas as pd

    from art2mus.tracking.registry import RegisteredVersion

CONCURRENCY_LIMIT = "art2mus-retrain"
DECIDED = ("passed", "failed", "awaiting_approval")
DEFAULT_WAIT_SECONDS = 3600.0  # how long a retrain waits for another one to finish
REMOTE_PROBE_SECONDS = 5.0
SLOT_REQUEST_SECONDS = 30.0  # the least time given to acquiring a concurrency slot

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

RUNNING_STAGE = re.compile(r"^Running stage '([^']+)':")
SKIPPED_STAGE = re.compile(r"^Stage '([^']+)' (?:didn't change, skipping|is cached - skipping run)")
FAILED_STAGE = re.compile(r"failed to reproduce '([^']+)'")


class TransientFailure(Art2MusError):
    """A failure worth retrying (a remote that did not answer, a store that was busy)."""


class ReproFailed(Art2MusError):
    """`dvc repro` stopped; `stage` is the stage that failed (None when DVC itself failed)."""

    def __init__(self, stage: str | None, output: list[str]) -> None:
        starts = [i for i, line in enumerate(output) if RUNNING_STAGE.search(line)]
        tail = "\n".join(output[starts[-1] if starts else 0:][-30:])  # the failing stage's own output
        super().__init__(f"dvc repro failed{f' in stage {stage!r}' if stage else ''}:\n{tail}")
        self.stage = stage
        self.output = output


class RetrainBusy(Art2MusError):
    """Another retrain holds the project (or the concurrency limit) for longer than we wait."""


@dataclass
class ReproReport:
    ran: list[str]
    skipped: list[str]
    seconds: float


@dataclass
class Verdict:
    """What the decide step concluded about the candidate version."""

    status: str  # a VALIDATION_STATUSES value, or "champion" when it already is
    promote: bool
    champion: str | None  # the champion it was compared with
    reasons: list[str] = field(default_factory=list)
    numbers: dict[str, float] = field(default_factory=dict)


@dataclass
class RetrainOutcome:
    """What a retrain did, for the CLI and the run's summary artifact."""

    version: str
    registered: bool  # False: the identity was already registered
    status: str
    promoted: bool
    champion: str | None  # after the run
    message: str
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    repro_seconds: float = 0.0


PERMANENT_MLFLOW_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS", "INVALID_PARAMETER_VALUE",
                                    "BAD_REQUEST", "PERMISSION_DENIED", "UNAUTHENTICATED", "INVALID_STATE"})


def is_transient(error: BaseException) -> bool:
    """Worth retrying: unreachable or busy services, not our own verdicts or bad input."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import OperationalError

    if isinstance(error, TransientFailure):
        return True
    if isinstance(error, Art2MusError):
        return False
    if isinstance(error, MlflowException):
        return error.error_code not in PERMANENT_MLFLOW_CODES
    return isinstance(error, (OSError, OperationalError))  # network, timeouts, "database is locked"


def retry_if_transient(task_, task_run, state) -> bool:
    """Prefect's retry_condition_fn: retry only what `is_transient` calls transient."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, BaseException) and is_transient(error)


def stop_process_group(process: subprocess.Popen) -> None:
    """End a command and everything it started (DVC runs each stage as a child)."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def run_logged(command: list[str], root: Path, logger: logging.Logger | logging.LoggerAdapter) -> tuple[int, list[str]]:
    """Run `command` in `root`, logging its output line by line; returns (exit code, lines).

    The command gets its own process group, killed on a timeout or an interrupt, so a stage never
    outlives its flow. The wait polls so that Prefect's timeout can interrupt it.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, errors="replace", start_new_session=True)
    lines: list[str] = []

    def drain() -> None:
        for line in process.stdout:
            line = line.rstrip()
            lines.append(line)
            if line:
                logger.info("%s", line)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        while process.poll() is None:
            time.sleep(0.1)
    except BaseException:
        stop_process_group(process)
        raise
    reader.join(timeout=10)
    return process.returncode, lines


def dvc(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "dvc", *arguments]


def default_remote(root: Path) -> tuple[str, dict[str, Any]] | None:
    """The default DVC remote's name and settings (project and local config), None when unset."""
    from dvc.config import Config, ConfigError

    dvc_dir = root / ".dvc"
    try:
        config = Config(dvc_dir=str(dvc_dir), local_dvc_dir=str(dvc_dir))
    except ConfigError as error:
        raise Art2MusError(f"{dvc_dir / 'config'}: {error}") from None
    name = config["core"].get("remote")
    if not name:
        return None
    if name not in config["remote"]:
        raise Art2MusError(f"{dvc_dir / 'config'}: the default remote {name!r} is not defined")
    return name, dict(config["remote"][name])


def is_local_url(url: str) -> bool:
    """A directory on this machine (DVC resolves relative paths), not a service."""
    scheme = urlsplit(url).scheme
    return scheme in ("", "file") or len(scheme) == 1  # one letter: a Windows drive


DEFAULT_PORTS = {"http": 80, "https": 443, "s3": 443, "ssh": 22, "webdav": 80, "webdavs": 443, "hdfs": 8020}


def remote_endpoint(remote: dict[str, Any]) -> tuple[str, int] | None:
    """The host and port a remote's data comes from, None when it cannot be told from the config."""
    url = remote["url"]
    scheme = urlsplit(url).scheme
    if remote.get("endpointurl"):
        endpoint = urlsplit(remote["endpointurl"])
        return (endpoint.hostname, endpoint.port or DEFAULT_PORTS.get(endpoint.scheme, 443)) if endpoint.hostname else None
    if scheme == "s3":
        return "s3.amazonaws.com", 443
    if scheme in ("gs", "gcs"):
        return "storage.googleapis.com", 443
    if scheme == "azure":
        account = remote.get("account_name")
        return (f"{account}.blob.core.windows.net", 443) if account else None
    host = urlsplit(url).hostname
    return (host, urlsplit(url).port or DEFAULT_PORTS.get(scheme, 443)) if host else None


def probe(endpoint: tuple[str, int], seconds: float = REMOTE_PROBE_SECONDS) -> str | None:
    """None when a TCP connection to the endpoint opens, else why not."""
    try:
        with socket.create_connection(endpoint, timeout=seconds):
            return None
    except OSError as error:
        return str(error) or type(error).__name__


@task(name="sync data", retries=3, retry_delay_seconds=exponential_backoff(10), retry_jitter_factor=0.5,
      retry_condition_fn=retry_if_transient, timeout_seconds=SYNC_TIMEOUT, cache_policy=NO_CACHE)
def sync_data(root: Path) -> str:
    """`dvc pull` from the default remote when it is a service that answers; otherwise say why not."""
    logger = get_run_logger()
    remote = default_remote(root)
    if remote is None:
        message = "no default DVC remote: nothing to pull"
    elif is_local_url(remote[1]["url"]):
        message = (f"the default DVC remote {remote[0]!r} is a local folder ({remote[1]['url']}): nothing to pull, "
                   "the local cache is the data")
    else:
        name, settings = remote
        endpoint = remote_endpoint(settings)
        problem = probe(endpoint) if endpoint else None
        if problem is not None:
            message = (f"the DVC remote {name!r} ({settings['url']}) is unreachable at {endpoint[0]}:{endpoint[1]} "
                       f"({problem}): reproducing from the local cache")
            logger.warning("%s", message)
            return message
        logger.info("pulling from the DVC remote %r (%s)", name, settings["url"])
        code, lines = run_logged(dvc("pull", "--allow-missing"), root, logger)
        if code != 0:
            raise TransientFailure(f"dvc pull from {name!r} failed (exit {code}):\n" + "\n".join(lines[-20:]))
        message = f"pulled from the DVC remote {name!r}"
    logger.info("%s", message)
    return message


def parse_repro(lines: list[str]) -> tuple[list[str], list[str], str | None]:
    """(stages that ran, stages DVC skipped, the stage that failed) from `dvc repro`'s output."""
    ran, skipped, failed = [], [], None
    for line in lines:
        if match := RUNNING_STAGE.search(line):
            ran.append(match.group(1))
        elif match := SKIPPED_STAGE.search(line):
            skipped.append(match.group(1))
        elif match := FAILED_STAGE.search(line):
            failed = match.group(1)
    return ran, skipped, failed


@task(name="reproduce", timeout_seconds=REPRO_TIMEOUT, cache_policy=NO_CACHE)
def reproduce(root: Path) -> ReproReport:
    """`dvc repro`: run what changed, skip the rest; a failing stage fails the task (no retries)."""
    logger = get_run_logger()
    started = time.monotonic()
    code, lines = run_logged(dvc("repro"), root, logger)
    ran, skipped, failed = parse_repro(lines)
    if code != 0:
        raise ReproFailed(failed, lines)
    report = ReproReport(ran, skipped, time.monotonic() - started)
    logger.info("reproduce: ran %s; skipped %s (%.1f s)", ", ".join(ran) or "nothing",
                ", ".join(skipped) or "nothing", report.seconds)
    return report


def gate_summary(gate: str, output: list[str]) -> str | None:
    """The gate stage's own summary (`art2mus: <gate>: ...` on stderr) from the repro output."""
    prefix = f"art2mus: {gate}: "
    for start, line in enumerate(output):
        if line.startswith(prefix):
            summary = [line[len(prefix):]]
            for following in output[start + 1:]:
                if following.startswith(("ERROR:", "Running stage", "art2mus: ")):
                    break
                summary.append(following)
            return "\n".join(summary).rstrip()
    return None


@task(name="quality gates", timeout_seconds=GATES_TIMEOUT, cache_policy=NO_CACHE)
def enforce_gates(root: Path, failed_stage: str | None = None, output: list[str] | None = None) -> list[str]:
    """Fail when a gate failed (its GX summary becomes a Prefect markdown artifact); else the headlines."""
    logger = get_run_logger()
    reports = {gate: read_results(root, gate) for gate in GATES}
    failed = [gate for gate in GATES if gate == failed_stage or (reports[gate] is not None and not reports[gate]["success"])]
    headlines = [results_headline(gate, reports[gate]) for gate in GATES]
    if not failed:
        missing = [gate for gate in GATES if reports[gate] is None]
        if missing:
            raise Art2MusError(f"no report of the quality gate(s) {', '.join(missing)} under {root / REPORTS_DIR} "
                               "after dvc repro (is the stage still in dvc.yaml?)")
        for headline in headlines:
            logger.info("%s", headline)
        return headlines
    summaries = {gate: gate_summary(gate, output or []) or results_headline(gate, reports[gate]) for gate in failed}
    create_markdown_artifact(failed_gates_markdown(summaries), key="quality-gates",
                             description=f"GX summary of {', '.join(failed)}")
    raise GateFailed(f"quality gate {', '.join(failed)} failed; nothing was registered\n"
                     + "\n".join(summaries.values()))


@task(name="open tracking run", retries=3, retry_delay_seconds=exponential_backoff(5), retry_jitter_factor=0.5,
      retry_condition_fn=retry_if_transient, timeout_seconds=TRACKING_TIMEOUT, cache_policy=NO_CACHE)
def open_tracking_run(root: Path, experiment: str, flow_run: str) -> str:
    """The flow's MLflow run; the stages' and the registration's runs nest under it."""
    import mlflow

    from art2mus.tracking.registry import registry_client
    from art2mus.tracking.runs import ensure_experiment, git_state

    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    experiment_id = ensure_experiment(experiment, uri, root)
    run = registry_client(root).create_run(experiment_id, run_name="retrain", tags={
        "art2mus.stage": "retrain", "prefect.flow_run": flow_run, **git_state(root)})
    get_run_logger().info("retrain: MLflow run %s (%s)", run.info.run_id, uri)
    return run.info.run_id


@task(name="close tracking run", retries=3, retry_delay_seconds=exponential_backoff(5), retry_jitter_factor=0.5,
      retry_condition_fn=retry_if_transient, timeout_seconds=TRACKING_TIMEOUT, cache_policy=NO_CACHE)
def close_tracking_run(root: Path, run_id: str, outcome: RetrainOutcome | None, error: str | None) -> None:
    from art2mus.tracking.registry import registry_client

    client = registry_client(root)
    if outcome is not None:
        client.set_tag(run_id, "retrain.version", outcome.version)
        client.set_tag(run_id, "retrain.status", outcome.status)
        client.set_tag(run_id, "retrain.registered", str(outcome.registered).lower())
        client.set_tag(run_id, "retrain.promoted", str(outcome.promoted).lower())
        client.set_tag(run_id, "retrain.stages_ran", ",".join(outcome.ran))
        client.set_tag(run_id, "retrain.message", outcome.message[:5000])
    if error is not None:
        client.set_tag(run_id, "retrain.error", error[:5000])
    client.set_terminated(run_id, "FAILED" if error is not None else "FINISHED")


def read_train_record(root: Path) -> TrainRecord:
    path = root / TRAIN_RECORD
    if not path.is_file():
        raise Art2MusError(f"{path}: missing; the train stage writes it (run dvc repro)")
    return TrainRecord.read(path)


@task(name="register", retries=2, retry_delay_seconds=exponential_backoff(5), retry_jitter_factor=0.5,
      retry_condition_fn=retry_if_transient, timeout_seconds=REGISTER_TIMEOUT, cache_policy=NO_CACHE)
def register(root: Path, experiment: str) -> RegisteredVersion:
    """Register models/art2mus, or find the version that already has its identity (DVC skipped train)."""
    from art2mus.tracking.registry import (
        MODEL_NAME,
        collect_lineage,
        register_model,
        registry_client,
    )

    logger = get_run_logger()
    record = read_train_record(root)
    registered = register_model(root / MODEL_DIR, record, collect_lineage(root), client=registry_client(root),
                                experiment=experiment, root=root)
    if registered.created:
        logger.info("register: %s version %s (weights %s, train run %s)", MODEL_NAME, registered.version,
                    record.weights_sha256[:12], record.mlflow_run_id)
    else:
        logger.info("register: nothing new to register: %s version %s already has this model's identity "
                    "(weights %s, same code and data)", MODEL_NAME, registered.version, record.weights_sha256[:12])
    return registered


@task(name="model card", retries=2, retry_delay_seconds=exponential_backoff(5), retry_jitter_factor=0.5,
      retry_condition_fn=retry_if_transient, timeout_seconds=REGISTER_TIMEOUT, cache_policy=NO_CACHE)
def document(root: Path, version: str, params: Params) -> bool:
    """The version's model card and licence summary (once per version: a re-run writes nothing)."""
    from art2mus.tracking.licences import summary_lines, version_licences
    from art2mus.tracking.modelcard import CARD_FILE, document_version
    from art2mus.tracking.registry import get_version, registry_client

    logger = get_run_logger()
    client = registry_client(root)
    written = document_version(root, version, params, client)
    if written:
        logger.info("model card: wrote %s for version %s (MLflow run of the version)", CARD_FILE, version)
    else:
        logger.info("model card: version %s already has its %s; nothing written", version, CARD_FILE)
    licences = version_licences(get_version(version, client).tags)
    for line in summary_lines(licences) if licences else []:
        logger.info("licences: %s", line)
    return written


def licence_blockers(model_version, params: Params) -> list[str]:
    """What in the version's licences forbids `promotion.intended_use` (empty: nothing)."""
    from art2mus.tracking.licences import (
        LicenceBlocked,
        check_licences,
        version_licences,
    )

    try:
        check_licences(version_licences(model_version.tags), params.promotion.intended_use,
                       str(model_version.version))
    except LicenceBlocked as blocked:
        return [str(blocked)]
    return []


def challenger_scores(root: Path, params: Params, weights: str) -> pd.DataFrame:
    """The evaluate stage's per-item scores of the registered model (checked to be of its weights)."""
    from art2mus.evaluation.evaluate import PER_ITEM_FILE, read_metrics
    from art2mus.io import read_table

    out = root / params.evaluate.out_dir
    if not (out / PER_ITEM_FILE).is_file():
        raise Art2MusError(f"{out / PER_ITEM_FILE}: missing; the evaluate stage writes it (run dvc repro)")
    evaluated = read_metrics(out).get("model", {}).get("weights_sha256")
    if evaluated != weights:
        raise Art2MusError(f"{out}: evaluates weights {str(evaluated)[:12]}, but {MODEL_DIR} holds {weights[:12]} "
                           "(run dvc repro so that evaluate follows train)")
    return read_table(out / PER_ITEM_FILE)


def champion_scores(root: Path, params: Params, champion: str) -> pd.DataFrame:
    """The champion's per-item scores on the same items, candidates, noise and timestep draws."""
    from art2mus.evaluation.evaluate import decision_scores, load_split
    from art2mus.generation import resolve_model_dir
    from art2mus.models.pipeline import Art2MusPipeline
    from art2mus.tracking.registry import MODEL_NAME

    pipeline = Art2MusPipeline.from_pretrained(resolve_model_dir(f"models:/{MODEL_NAME}/{champion}"))
    return decision_scores(pipeline, load_split(params, params.evaluate.split, root), params)


def paired(ours: pd.DataFrame, theirs: pd.DataFrame, metrics: list[str]) -> tuple[dict, dict]:
    """Both models' scores per metric, row i the same (artwork, track) item for both."""
    keys = ["artwork_id", "track_id"]
    merged = ours.merge(theirs, on=keys, how="inner", suffixes=("", "_champion"))
    if len(merged) != len(ours) or len(merged) != len(theirs):
        raise Art2MusError(f"promotion: the challenger's {len(ours)} evaluated items and the champion's {len(theirs)} "
                           f"share only {len(merged)} (evaluate both on the same split with the same params)")
    return ({name: merged[name].to_numpy() for name in metrics},
            {name: merged[f"{name}_champion"].to_numpy() for name in metrics})


def decision_key(champion: str | None, params: Params) -> str:
    """What a verdict depends on besides the challenger itself: the champion, the rule, the evaluation."""
    inputs = {"champion": champion, "promotion": params.promotion.model_dump(mode="json"),
              "evaluate": params.evaluate.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def previous_verdict(model_version, champion: str | None, params: Params) -> Verdict | None:
    """The verdict that still holds for an already registered version, None when it must be decided."""
    tags = model_version.tags
    if champion == str(model_version.version):
        return Verdict("champion", False, champion, [f"version {champion} is the champion"])
    if PROMOTED_AT_TAG in tags:
        how = f"rolled back at {tags[ROLLED_BACK_AT_TAG]}" if ROLLED_BACK_AT_TAG in tags else "by a later promotion"
        reason = (f"version {model_version.version} was champion before and was replaced ({how}); the flow never "
                  f"re-promotes it (art2mus promote {model_version.version} does)")
        return Verdict(tags.get(VALIDATION_TAG, "passed"), False, champion, [reason])
    status = tags.get(VALIDATION_TAG)
    if status in DECIDED and tags.get(DECISION_KEY_TAG) == decision_key(champion, params):
        reason = f"already decided against champion {champion or 'none'} with the same rule and evaluation: {status}"
        return Verdict(status, status == "passed" and not params.promotion.require_approval, champion, [reason])
    return None


@task(name="decide", retries=1, retry_delay_seconds=exponential_backoff(10), retry_jitter_factor=0.5,
      retry_condition_fn=retry_if_transient, timeout_seconds=DECIDE_TIMEOUT, cache_policy=NO_CACHE)
def decide_candidate(root: Path, version: str, params: Params) -> Verdict:
    """Challenger vs champion on the same items and draws (first run: floors only); the verdict
    becomes the version's `validation_status` and `decision.*` tags."""
    from art2mus.tracking.promotion import decide
    from art2mus.tracking.registry import (
        champion_version,
        get_version,
        record_validation,
        registry_client,
        set_challenger,
    )

    logger = get_run_logger()
    client = registry_client(root)
    champion = champion_version(client)
    model_version = get_version(version, client)
    verdict = previous_verdict(model_version, champion, params)
    if verdict is not None:
        logger.info("decide: version %s: %s", version, "; ".join(verdict.reasons))
        return verdict
    blocked = licence_blockers(model_version, params)
    if blocked:  # the policy forbids it whatever it scores: nothing to compute
        set_challenger(version, client)
        record_validation(version, "failed", {}, blocked, client, champion=champion, key=decision_key(champion, params))
        logger.warning("decide: %s", blocked[0])
        return Verdict("failed", False, champion, blocked)
    metrics = list(params.promotion.metrics)
    weights = VersionTags.from_tags(model_version.tags).weights_sha256
    ours = challenger_scores(root, params, weights)
    if champion is not None and VersionTags.from_tags(get_version(champion, client).tags).weights_sha256 == weights:
        reasons = [f"the champion (version {champion}) has the same weights: nothing to gain"]
        record_validation(version, "failed", {}, reasons, client, champion=champion,
                          key=decision_key(champion, params))
        logger.info("decide: version %s: %s", version, reasons[0])
        return Verdict("failed", False, champion, reasons)
    if champion is None:
        logger.info("decide: no champion yet: version %s is judged by the floors only", version)
        decision = decide({name: ours[name].to_numpy() for name in metrics}, None, params.promotion)
    else:
        logger.info("decide: scoring champion version %s on the same %d items and draws", champion, len(ours))
        challenger, defender = paired(ours, champion_scores(root, params, champion), metrics)
        decision = decide(challenger, defender, params.promotion)
    status = ("awaiting_approval" if params.promotion.require_approval else "passed") if decision.promote else "failed"
    set_challenger(version, client)
    record_validation(version, status, decision.numbers, decision.reasons, client, champion=champion,
                      key=decision_key(champion, params))
    for reason in decision.reasons:
        logger.info("decide: %s", reason)
    logger.info("decide: version %s %s", version, {"passed": "wins", "failed": "is not promoted",
                                                   "awaiting_approval": "wins and awaits approval"}[status])
    return Verdict(status, decision.promote and not params.promotion.require_approval, champion, decision.reasons,
                   decision.numbers)


@task(name="promote", retries=1, retry_delay_seconds=exponential_backoff(10), retry_jitter_factor=0.5,
      retry_condition_fn=retry_if_transient, timeout_seconds=PROMOTE_TIMEOUT, cache_policy=NO_CACHE)
def promote_candidate(root: Path, version: str, verdict: Verdict, by: str, params: Params | None = None) -> str:
    """Smoke-test the version's pyfunc (load, generate once), then move `champion` to it in one call.

    With `params`, the licence policy is checked first (a verdict may predate it)."""
    from art2mus.tracking.licences import LicenceBlocked
    from art2mus.tracking.registry import (
        ChampionChanged,
        champion_version,
        get_version,
        promote,
        record_validation,
        registry_client,
    )

    logger = get_run_logger()
    client = registry_client(root)
    if champion_version(client) == version:  # a retried attempt whose first try got through
        return version
    blocked = licence_blockers(get_version(version, client), params) if params is not None else []
    if blocked:
        record_validation(version, "failed", None, [*verdict.reasons, *blocked], client, champion=verdict.champion)
        raise LicenceBlocked(blocked[0])
    try:  # under the registry lock, the champion must still be the one `decide` compared against
        event = promote(version, by, reason=f"retrain: beat {verdict.champion or 'no champion (first run)'}",
                        metrics=verdict.numbers, client=client, expected_champion=verdict.champion, root=root)
    except ChampionChanged:
        raise  # the verdict is stale, not the version: its validation stays as decided
    except Art2MusError as error:
        record_validation(version, "failed", None, [*verdict.reasons, str(error)], client, champion=verdict.champion)
        raise
    if event is None:
        logger.info("promote: version %s became the champion meanwhile; nothing recorded", version)
    else:
        logger.info("promote: version %s is the champion (was %s)", version, event.previous or "none")
    return version


@contextlib.contextmanager
def project_lock(root: Path, wait_seconds: float, logger) -> Iterator[None]:
    """Hold the project's retrain lock (waiting up to `wait_seconds`), or refuse clearly."""
    from filelock import FileLock, Timeout

    path = root / RETRAIN_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    busy = RetrainBusy(f"another retrain is running in {root} (it holds {path}); waited {wait_seconds:.0f} s; "
                       "try again when it has finished")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if wait_seconds <= 0:
            raise busy from None
        logger.info("another retrain holds %s; waiting up to %.0f s", path, wait_seconds)
        try:
            lock.acquire(timeout=wait_seconds)
        except Timeout:
            raise busy from None
    try:
        yield
    finally:
        lock.release()


def prefect_server_configured() -> bool:
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


def ensure_concurrency_limit(name: str) -> bool:
    """Create the one-slot global concurrency limit unless it exists (an operator's setting wins);
    True when all its slots are taken right now."""
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another retrain created it meanwhile
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            return False
        return limit.active_slots >= limit.limit


@contextlib.contextmanager
def retrain_slot(name: str, wait_seconds: float, logger) -> Iterator[None]:
    """One slot of the Prefect concurrency limit `name` when a Prefect server is configured."""
    from prefect.concurrency.sync import concurrency

    if not prefect_server_configured():
        logger.info("Prefect runs ephemerally (no PREFECT_API_URL): the concurrency limit %r needs a Prefect server; "
                    "the project lock keeps retrains apart", name)
        yield
        return
    busy = RetrainBusy(f"the Prefect concurrency limit {name!r} stayed full for {wait_seconds:.0f} s "
                       "(another retrain is running)")
    if ensure_concurrency_limit(name):
        if wait_seconds <= 0:
            raise busy
        logger.info("the Prefect concurrency limit %r is full (another retrain is running); waiting up to %.0f s",
                    name, wait_seconds)
    with contextlib.ExitStack() as stack:
        try:  # acquiring takes a request even when a slot is free: never time out before it can answer
            stack.enter_context(concurrency(name, occupy=1, timeout_seconds=max(wait_seconds, SLOT_REQUEST_SECONDS),
                                            strict=True))
        except TimeoutError:
            raise busy from None
        yield


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for this process and its commands, restoring them afterwards."""
    previous = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@task(name="change report", retries=2, retry_delay_seconds=exponential_backoff(5), retry_jitter_factor=0.5,
      retry_condition_fn=retry_if_transient, timeout_seconds=TRACKING_TIMEOUT, cache_policy=NO_CACHE)
def report_changes(root: Path, version: str, champion: str | None, params: Params, run_id: str | None) -> str:
    """What changed since the champion the candidate was judged against: a Prefect markdown artifact
    and `change_report.md` / `.json` on the flow's MLflow run."""
    from art2mus.tracking.changes import (
        ARTIFACT_KEY,
        REPORT_FILE,
        REPORT_JSON,
        build_change_report,
        report_markdown,
    )
    from art2mus.tracking.registry import registry_client

    client = registry_client(root)
    try:
        report = build_change_report(root, version, champion, list(params.promotion.metrics), client)
    except Art2MusError as error:  # a report that cannot be made must not undo a retrain that is done
        get_run_logger().warning("change report: not made: %s", error)
        create_markdown_artifact(f"# Change report: version {version}\n\nNot made: {error}\n", key=ARTIFACT_KEY,
                                 description="the change report could not be made")
        return ""
    markdown = report_markdown(report, params.promotion.confidence)
    create_markdown_artifact(markdown, key=ARTIFACT_KEY, description=report.headline[:500])
    if run_id is not None:
        client.log_text(run_id, markdown, REPORT_FILE)
        client.log_dict(run_id, report.to_dict(), REPORT_JSON)
    get_run_logger().info("change report: %s", report.headline)
    return markdown


def summary_markdown(outcome: RetrainOutcome) -> str:
    lines = [f"# Retrain: {outcome.message}", "",
             f"- version: {outcome.version} ({'registered now' if outcome.registered else 'already registered'})",
             f"- validation status: {outcome.status}", f"- champion: {outcome.champion or 'none'}",
             f"- stages ran: {', '.join(outcome.ran) or 'none'}", f"- stages skipped: {', '.join(outcome.skipped) or 'none'}"]
    if outcome.reasons:
        lines += ["", "## Decision", "", *[f"- {reason}" for reason in outcome.reasons]]
    return "\n".join(lines)


def conclude(registered: RegisteredVersion, verdict: Verdict, promoted: bool, champion: str | None, report: ReproReport,
             require_approval: bool) -> RetrainOutcome:
    """The outcome, with one sentence a person can act on."""
    version = registered.version
    if verdict.status == "champion":
        message = (f"nothing changed: version {version} is already registered and is the champion"
                   if not registered.created else f"version {version} is the champion")
    elif promoted:
        message = f"version {version} is the new champion (was {verdict.champion or 'none'})"
    elif verdict.status == "awaiting_approval" and require_approval:
        won = f"beat champion {verdict.champion}" if verdict.champion else "passed the floors (no champion yet)"
        message = f"version {version} {won} and awaits approval: art2mus promote {version}"
    elif verdict.status == "failed":
        message = (f"version {version} is not promoted; champion stays {champion or 'none'}"
                   + ("" if registered.created else " (nothing new to register)"))
        if any(reason.startswith("licences:") for reason in verdict.reasons):
            message += "; its licences forbid promotion.intended_use (see the licences named above)"
    else:
        message = f"version {version}: {'; '.join(verdict.reasons)}; champion stays {champion or 'none'}"
    return RetrainOutcome(version, registered.created, verdict.status, promoted, champion, message, report.ran,
                          report.skipped, verdict.reasons, report.seconds)


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


def retrain_steps(root: Path, params: Params, by: str) -> RetrainOutcome:
    """The tasks in order; `by` is who promotions are recorded as made by."""
    from art2mus.tracking.registry import champion_version, registry_client

    sync_data(root)
    try:
        report, failure = reproduce(root), None
    except ReproFailed as error:
        report, failure = None, error
    if failure is not None:
        if failure.stage in GATES:
            enforce_gates(root, failure.stage, failure.output)  # raises GateFailed with the gate's summary
        raise failure
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
