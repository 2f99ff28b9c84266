"""The MLflow client on the project's tracking store, for the registry, lineage and the commands."""

from __future__ import annotations

from pathlib import Path

from art2mus.env import project_root
from art2mus.tracking.runs import relocate_if_moved
from art2mus.workspace import tracking_uri


def registry_client(root: Path | None = None):
    """An MlflowClient on the project's tracking store (`MLFLOW_TRACKING_URI` wins); the project's own
    store, copied or moved from another project, is relocated first (so `gc` in a copy never deletes,
    nor a run writes, the original's artifacts)."""
    from mlflow import MlflowClient

    uri = tracking_uri(root)
    relocate_if_moved(root or project_root(), uri)
    return MlflowClient(tracking_uri=uri)
