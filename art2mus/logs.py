"""Logging set-up shared by the CLI and the stages: what happened, one line per event."""

from __future__ import annotations

import logging

QUIET_LOGGERS = ("great_expectations", "alembic", "mlflow", "urllib3", "botocore", "filelock")


def setup_logging(quiet: bool = False) -> None:
    """Plain messages on stderr; third-party chatter only when it is a warning."""
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s", force=True)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
