"""MLflow tracking: the run context every stage logs through (where runs go: art2mus.workspace.tracking_uri)."""

from art2mus.tracking.runs import stage_run

__all__ = ["stage_run"]
