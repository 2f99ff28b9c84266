"""The environment the project's tools run with: Prefect's ephemeral server gets time to start on 2 cores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from art2mus.env import configure_environment, project_environment

STARTUP = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
READ_BY_PREFECT = ("from prefect.settings import get_current_settings; "
                   "print(get_current_settings().server.ephemeral.startup_timeout_seconds)")


def test_prefects_ephemeral_server_gets_two_minutes_to_start_in_every_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prefect's own 20 s failed the retrain and features flows on a loaded 2-core CI machine.
    monkeypatch.setattr(os, "environ", {key: value for key, value in os.environ.items() if key != STARTUP})
    configure_environment(tmp_path)
    assert os.environ[STARTUP] == "120"
    env = project_environment(tmp_path)
    shown = subprocess.run([sys.executable, "-c", READ_BY_PREFECT], env=env, capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == "120"


def test_a_users_own_startup_timeout_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "environ", {**os.environ, STARTUP: "45"})
    configure_environment(tmp_path)
    assert os.environ[STARTUP] == "45"
