"""The environment the project's tools run with: Prefect's ephemeral server gets time to start on 2 cores, and
one that does not start is a message, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from art2mus.env import configure_environment, project_environment

ROOT = Path(__file__).resolve().parents[2]
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


def test_a_prefect_server_that_does_not_start_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    env = {**project_environment(tmp_path), STARTUP: "0", "PYTHONPATH": str(ROOT)}  # no time at all
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run([sys.executable, "-m", "flows.retrain", "run"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith("art2mus: retrain: Prefect's local API server did not start in 0 s"), done.stderr
    assert STARTUP in message and "PREFECT_API_URL" in message


# Run in a fresh process: the modules a training stage imports (torch, diffusers, transformers, MLflow, GX, ...).
IMPORTED_BY_A_STAGE = ("import importlib.util, sys, stages.train, stages.evaluate\n"
                       "for module in list(sys.modules.values()):\n"
                       "    origin = getattr(getattr(module, '__spec__', None), 'origin', None) or ''\n"
                       "    if origin.endswith('.py') and sys.prefix in origin:\n"
                       "        print(origin, importlib.util.cache_from_source(origin), sep='\\t')\n")


def test_every_dependency_a_stage_imports_is_already_byte_compiled() -> None:
    # Under PYTHONDONTWRITEBYTECODE=1 (CI's image sets it) nothing compiled at import is kept: with
    # `pip install --no-compile`, every stage process compiled torch, MLflow and the rest again (~10 s each).
    imported = subprocess.run([sys.executable, "-c", IMPORTED_BY_A_STAGE], cwd=ROOT, capture_output=True, text=True,
                              check=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    modules = [line.split("\t") for line in imported.stdout.splitlines()]
    uncompiled = [source for source, cached in modules if not Path(cached).is_file()]
    assert len(modules) > 500 and uncompiled == [], f"{len(uncompiled)} of {len(modules)}, e.g. {uncompiled[:5]}"


# What a DVC stage does: `python -m stages.X` through a shell, found on PATH.
STAGE_PYTHON = ("import subprocess; from art2mus.env import configure_environment; configure_environment(); "
                "print(subprocess.run('python -c \"import sys; print(sys.prefix)\"', shell=True, capture_output=True, "
                "text=True).stdout.strip())")


def test_stages_run_with_the_commands_own_interpreter_when_its_environment_is_not_activated(tmp_path: Path) -> None:
    # `.venv/bin/art2mus retrain` typed without activating .venv: dvc ran `python -m stages.sample` with the
    # system's Python, which stopped at `import pandas` (a traceback, not a message).
    bare = os.pathsep.join(["/usr/local/bin", "/usr/bin", "/bin"])
    env = {**os.environ, "PATH": bare, "PYTHONPATH": str(ROOT)}
    shown = subprocess.run([sys.executable, "-c", STAGE_PYTHON], cwd=tmp_path, env=env, capture_output=True,
                           text=True, check=True)
    assert shown.stdout.strip() == sys.prefix
