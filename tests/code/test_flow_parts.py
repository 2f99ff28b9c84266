"""Unit tests of the retrain flow's parts: the locks, the retry policy, the verdict's bookkeeping, the
command line, the environment the stages inherit and the gates' reports."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, TEMPORARILY_UNAVAILABLE
from sqlalchemy.exc import OperationalError

from art2mus.config import load_params
from art2mus.errors import Art2MusError
from art2mus.locks import concurrency_slot, file_lock
from art2mus.orchestration.console import retrain_arguments
from art2mus.orchestration.parent_run import environment
from art2mus.orchestration.retries import TransientFailure, is_transient, task_options
from art2mus.orchestration.steps import failed_summaries, gate_failure, gate_reports, passed_headlines
from art2mus.quality.report import GateReport
from art2mus.tracking.verdict import decision_key, paired, previous_verdict
from art2mus.workspace import DECISION_KEY_TAG, PROMOTED_AT_TAG, ROLLED_BACK_AT_TAG, VALIDATION_TAG

ROOT = Path(__file__).resolve().parents[2]


class Busy(Art2MusError):
    """The test's `busy` error."""


def test_a_held_file_lock_refuses_at_once_with_no_wait_and_is_free_after_release(tmp_path: Path) -> None:
    path = tmp_path / "locks" / "project.lock"
    with file_lock(path, 0, Busy("held")):
        with pytest.raises(Busy, match="held"):
            with file_lock(path, 0, Busy("held")):
                pass
    with file_lock(path, 0, Busy("held")):  # released: free again
        pass


def test_a_file_lock_waits_for_its_holder_up_to_the_wait(tmp_path: Path) -> None:
    path = tmp_path / "project.lock"
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with file_lock(path, 0, Busy("held")):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(10)
    with pytest.raises(Busy):
        with file_lock(path, 0.2, Busy("still held")):
            pass
    threading.Timer(0.3, release.set).start()
    started = time.monotonic()
    with file_lock(path, 10, Busy("held")):
        waited = time.monotonic() - started
    thread.join()
    assert 0.2 < waited < 10


def test_without_a_prefect_server_the_concurrency_slot_takes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("art2mus.locks.prefect_server_url", lambda: None)
    monkeypatch.setattr("art2mus.locks.ensure_concurrency_limit", lambda name: pytest.fail("asked a server"))
    with concurrency_slot("art2mus-retrain", 0, Busy("busy")):
        pass


@pytest.mark.parametrize(("error", "transient"), [
    (TransientFailure("dvc pull: the remote did not answer"), True),
    (ConnectionRefusedError(), True),
    (TimeoutError(), True),
    (OperationalError("SELECT 1", {}, Exception("database is locked")), True),
    (MlflowException("busy", error_code=TEMPORARILY_UNAVAILABLE), True),
    (MlflowException("no such model", error_code=RESOURCE_DOES_NOT_EXIST), False),
    (Art2MusError("quality gate validate_raw failed"), False),
    (ValueError("bad input"), False),
])
def test_only_unreachable_or_busy_services_are_transient(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


def test_task_options_retry_only_with_retries_and_never_cache() -> None:
    plain = task_options(60)
    assert plain["timeout_seconds"] == 60 and "retries" not in plain
    retried = task_options(60, retries=3, first_delay=2.0)
    assert retried["retries"] == 3 and retried["cache_policy"] is plain["cache_policy"]
    assert retried["retry_delay_seconds"](3) == [2.0, 4.0, 8.0]
    assert retried["retry_condition_fn"].__name__ == "retry_if_transient"


@pytest.fixture(scope="module")
def params():
    return load_params(ROOT / "params.yaml")


def version(number: int, **tags: str) -> SimpleNamespace:
    return SimpleNamespace(version=str(number), tags=tags)


def test_the_decision_key_changes_with_the_champion_the_rule_and_the_evaluation(params) -> None:
    key = decision_key("1", params)
    assert key == decision_key("1", params)
    assert key != decision_key("2", params) != decision_key(None, params)
    stricter = params.model_copy(update={"promotion": params.promotion.model_copy(update={"require_approval": True})})
    assert decision_key("1", stricter) != key
    other_split = params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"seed": 123})})
    assert decision_key("1", other_split) != key


def test_a_verdict_holds_only_for_the_same_champion_rule_and_evaluation(params) -> None:
    decided = version(3, **{VALIDATION_TAG: "failed", DECISION_KEY_TAG: decision_key("1", params)})
    assert previous_verdict(decided, "1", params).status == "failed"
    assert previous_verdict(decided, "2", params) is None  # a new champion: decide again
    assert previous_verdict(version(3), "1", params) is None  # never decided


def test_the_champion_and_a_replaced_champion_are_never_decided_again(params) -> None:
    assert previous_verdict(version(2), "2", params).status == "champion"
    replaced = version(1, **{PROMOTED_AT_TAG: "2026-12-01", ROLLED_BACK_AT_TAG: "2026-12-02", VALIDATION_TAG: "passed"})
    verdict = previous_verdict(replaced, "2", params)
    assert not verdict.promote and "rolled back at 2026-12-02" in verdict.reasons[0]


def test_scores_are_paired_by_item_and_unmatched_items_are_refused() -> None:
    ours = pd.DataFrame({"artwork_id": ["a", "b"], "track_id": [1, 2], "score": [0.5, 0.7]})
    theirs = pd.DataFrame({"artwork_id": ["b", "a"], "track_id": [2, 1], "score": [0.1, 0.2]})
    challenger, champion = paired(ours, theirs, ["score"])
    assert challenger["score"].tolist() == [0.5, 0.7] and champion["score"].tolist() == [0.2, 0.1]
    with pytest.raises(Art2MusError, match="share only 1"):
        paired(ours, theirs.iloc[:1], ["score"])


def test_the_flow_command_line_runs_or_serves_with_the_default_wait() -> None:
    run = retrain_arguments(["run", "--quiet"], 60.0)
    assert (run.command, run.wait, run.quiet) == ("run", 60.0, True)
    serve = retrain_arguments(["serve", "--name", "nightly", "--cron", "0 3 * * *"], 60.0)
    assert (serve.command, serve.name, serve.cron, serve.timezone, serve.wait) == ("serve", "nightly", "0 3 * * *",
                                                                                  "UTC", 60.0)
    with pytest.raises(SystemExit):
        retrain_arguments(["serve", "--name", "nightly"], 60.0)  # no --cron


def test_the_environment_is_restored_after_the_block(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ART2MUS_TEST_KEPT", "before")
    monkeypatch.delenv("ART2MUS_TEST_NEW", raising=False)
    with environment({"ART2MUS_TEST_KEPT": "during", "ART2MUS_TEST_NEW": "during"}):
        assert os.environ["ART2MUS_TEST_KEPT"] == os.environ["ART2MUS_TEST_NEW"] == "during"
    assert os.environ["ART2MUS_TEST_KEPT"] == "before" and "ART2MUS_TEST_NEW" not in os.environ


def test_gate_reports_name_the_failed_gates_and_the_missing_ones(tmp_path: Path) -> None:
    failing = GateReport("validate_raw", False, "validate_raw: FAILED 1 of 2 expectations",
                         {"gate": "validate_raw", "success": False, "suites": {},
                          "statistics": {"evaluated_expectations": 2, "successful_expectations": 1,
                                         "unsuccessful_expectations": 1}})
    failing.write(tmp_path / "data/reports/validate_raw.json")
    summaries = failed_summaries(gate_reports(tmp_path, "validate_raw"))
    assert list(summaries) == ["validate_raw"]
    assert str(gate_failure(summaries)).startswith("quality gate validate_raw failed; nothing was registered\n")
    assert failed_summaries(gate_reports(tmp_path, "validate_splits")) == {}  # the stage left no report
    with pytest.raises(Art2MusError, match="no report of the quality gate"):
        passed_headlines(tmp_path, gate_reports(tmp_path, None))
