"""The MLflow run every stage logs its params, metrics and small artifacts through."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from art2mus.env import configure_environment, project_root

logger = logging.getLogger(__name__)

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
PARENT_RUN_ENV = "ART2MUS_PARENT_RUN_ID"  # set by a flow so stage runs nest under it


def process_rank() -> int:
    """This process's global rank in a torchrun/accelerate launch (their `RANK`), 0 when launched alone.

    Read from the environment the launcher sets, so it is known before (and without) any process group.
    """
    return int(os.environ.get("RANK", "0"))


def tracking_uri(root: Path | None = None) -> str:
    """`MLFLOW_TRACKING_URI` when set, else a SQLite file in the project."""
    explicit = os.environ.get("MLFLOW_TRACKING_URI")
    if explicit:
        return explicit
    root = root or project_root()
    return f"sqlite:///{(root / DEFAULT_DB).as_posix()}"


def is_local_store(uri: str) -> bool:
    return uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested params to dotted keys: {'ratios': {'train': 0.7}} -> {'ratios.train': 0.7}."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def git_state(root: Path) -> dict[str, str]:
    """The commit and whether the work tree differs from it; empty outside a git repository."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"git.commit": commit, "git.dirty": str(bool(status.strip())).lower()}


def ensure_experiment(name: str, uri: str, root: Path) -> str:
    """The experiment's id, creating it (artifacts inside the project for local stores)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = (root / DEFAULT_ARTIFACTS).as_uri() if is_local_store(uri) else None
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except MlflowException:
        # Another process created it between our lookup and our create.
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


@dataclass
class StageRun:
    """A handle on the active stage run; an inactive one (a non-zero rank's) logs nothing."""

    run_id: str
    stage: str
    active: bool = True

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if not self.active:
            return
        import mlflow

        mlflow.log_metrics({key: float(value) for key, value in metrics.items()}, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Log a file, or every file of a folder (under `artifact_path`)."""
        if not self.active:
            return
        import mlflow

        if Path(path).is_dir():
            mlflow.log_artifacts(str(path), artifact_path=artifact_path)
        else:
            mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        if not self.active:
            return
        import mlflow

        mlflow.log_dict(dict(data), artifact_file)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self.active:
            return
        import mlflow

        mlflow.set_tags({key: str(value) for key, value in tags.items()})


@contextlib.contextmanager
def stage_run(
    stage: str,
    params: BaseModel | Mapping[str, Any],
    experiment: str = "art2mus",
    root: Path | None = None,
) -> Iterator[StageRun]:
    """Start an MLflow run for `stage`, log its params and code version, end it FAILED on error.

    Under a multi-process launch only rank 0 tracks: other ranks get an inactive handle and make no
    MLflow call at all (one run per stage, no concurrent writers to the store).
    """
    root = configure_environment(root or project_root())
    if process_rank() != 0:
        yield StageRun(run_id="", stage=stage, active=False)
        return
    import mlflow

    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    experiment_id = ensure_experiment(experiment, uri, root)
    values = params.model_dump(mode="json") if isinstance(params, BaseModel) else dict(params)
    tags = {"art2mus.stage": stage, **git_state(root)}
    parent = os.environ.get(PARENT_RUN_ENV)
    if parent:
        tags["mlflow.parentRunId"] = parent
    with mlflow.start_run(experiment_id=experiment_id, run_name=stage, tags=tags) as run:
        mlflow.log_params({key: str(value)[:6000] for key, value in flatten(values).items()})
        logger.info("%s: MLflow run %s (%s)", stage, run.info.run_id, uri)
        yield StageRun(run_id=run.info.run_id, stage=stage)
