"""The retry policy of the flow's tasks: retry with exponential backoff only what can be transient.

An unreachable remote, a busy tracking store or "database is locked" is worth another try; a failed
gate, a failing stage, a rejected model or bad input is not (every Art2MusError but TransientFailure).
Every task gets a timeout and no result cache (a retrain must look at the project as it is now).
"""

from __future__ import annotations

from typing import Any

from art2mus.errors import Art2MusError

JITTER = 0.5  # of each backoff delay, so retrying workers do not knock in step
PERMANENT_MLFLOW_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS", "INVALID_PARAMETER_VALUE",
                                    "BAD_REQUEST", "PERMISSION_DENIED", "UNAUTHENTICATED", "INVALID_STATE"})


class TransientFailure(Art2MusError):
    """A failure worth retrying (a remote that did not answer, a store that was busy)."""


def is_transient(error: BaseException) -> bool:
    """Worth retrying: unreachable or busy services, not our own verdicts or bad input."""
    from mlflow.exceptions import MlflowException  # both heavy: only when a task has failed
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


def task_options(timeout_seconds: float, retries: int = 0, first_delay: float = 5.0) -> dict[str, Any]:
    """A task's keyword arguments for `prefect.task`: its timeout, no cache and, with `retries`, retries of
    transient failures after `first_delay` seconds, doubling each time (with jitter)."""
    from prefect.cache_policies import NO_CACHE
    from prefect.tasks import exponential_backoff

    options: dict[str, Any] = {"timeout_seconds": timeout_seconds, "cache_policy": NO_CACHE}
    if retries:
        options |= {"retries": retries, "retry_delay_seconds": exponential_backoff(first_delay),
                    "retry_jitter_factor": JITTER, "retry_condition_fn": retry_if_transient}
    return options
