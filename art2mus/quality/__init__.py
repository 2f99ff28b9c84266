"""Data-quality gates (Great Expectations) that stop a pipeline run on bad data."""

from art2mus.quality.gates import validate_raw, validate_splits
from art2mus.quality.report import GateFailed, GateReport, enforce

__all__ = ["GateFailed", "GateReport", "enforce", "validate_raw", "validate_splits"]
