"""MLflow tracking: where runs go, and the run context every stage logs through."""

from art2mus.tracking.runs import stage_run, tracking_uri

__all__ = ["stage_run", "tracking_uri"]
