"""The retrain's own MLflow run: the stages' and the registration's runs nest under it (ART2MUS_PARENT_RUN_ID
in the environment the stages inherit); it ends tagged with the outcome, or FAILED with the error."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from art2mus.orchestration.outcome import MAX_TAG_CHARS, RetrainOutcome
from art2mus.tracking.client import registry_client
from art2mus.tracking.runs import ensure_experiment, git_state
from art2mus.workspace import tracking_uri


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


def open_retrain_run(root: Path, experiment: str, flow_run: str) -> tuple[str, str]:
    """Start the `retrain` run in `experiment`, tagged with the Prefect flow run and git state; (run id, store uri)."""
    import mlflow  # heavy: imported when the flow runs, not when it is loaded

    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    run = registry_client(root).create_run(ensure_experiment(experiment, uri, root), run_name="retrain", tags={
        "art2mus.stage": "retrain", "prefect.flow_run": flow_run, **git_state(root)})
    return run.info.run_id, uri


def close_retrain_run(root: Path, run_id: str, outcome: RetrainOutcome | None, error: str | None) -> None:
    """Tag the run with the outcome (and the error, if any) and end it FINISHED or FAILED."""
    client = registry_client(root)
    for key, value in (outcome.run_tags() if outcome is not None else {}).items():
        client.set_tag(run_id, key, value)
    if error is not None:
        client.set_tag(run_id, "retrain.error", error[:MAX_TAG_CHARS])
    client.set_terminated(run_id, "FAILED" if error is not None else "FINISHED")
