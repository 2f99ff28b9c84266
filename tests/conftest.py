"""Shared fixtures: a temporary copy of the project as a git repo, for end-to-end runs."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# The end-to-end run is the embedded default itself (the learning run the model tests assert on);
# overrides here would only shrink it.
E2E_PARAMS: dict = {}
SERVER_TIMEOUT = 180  # seconds a test server may take to answer


def project_files() -> list[str]:
    """Tracked and not-ignored files of the working tree (what a clone plus local edits holds)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split("\0")
    return [name for name in listed if name and (ROOT / name).is_file()]


def merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return merged


def copy_project(destination: Path, params_override: dict) -> Path:
    """Copy the project into `destination` as a fresh git repo with its own author identity."""
    for name in project_files():
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    params = yaml.safe_load((destination / "params.yaml").read_text())
    (destination / "params.yaml").write_text(yaml.safe_dump(merge(params, params_override), sort_keys=False))
    git = ["git", "-c", "user.name=art2mus tests", "-c", "user.email=tests@art2mus.invalid"]
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=destination, check=True)
    subprocess.run([*git, "add", "-A"], cwd=destination, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "test copy"], cwd=destination, check=True)
    return destination


def project_env(root: Path) -> dict[str, str]:
    """The environment `make` gives: the venv first on PATH, state inside the copy, no analytics."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "PREFECT_", "DVC_"))}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        DVC_NO_ANALYTICS="1",
        GX_ANALYTICS_ENABLED="false",
        MLFLOW_DISABLE_TELEMETRY="true",
        DVC_SITE_CACHE_DIR=str(root / ".dvc" / "tmp" / "site_cache"),
        PREFECT_HOME=str(root / ".prefect"),
        GIT_AUTHOR_NAME="art2mus tests", GIT_AUTHOR_EMAIL="tests@art2mus.invalid",
        GIT_COMMITTER_NAME="art2mus tests", GIT_COMMITTER_EMAIL="tests@art2mus.invalid",
    )
    return env


def run(command: list[str], root: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=root, env=project_env(root), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="session")
def pipeline_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project copy on which the whole pipeline has run once with `dvc repro` (shared by e2e tests)."""
    root = copy_project(tmp_path_factory.mktemp("project"), E2E_PARAMS)
    run([str(BIN / "dvc"), "repro"], root)
    return root


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        os.killpg(process.pid, sig)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prefect server on 127.0.0.1 shared by every retrain of the session (its home in a temp dir)."""
    home = tmp_path_factory.mktemp("prefect_home")
    port = free_port()
    env = {**project_env(home), "PREFECT_HOME": str(home)}
    log = home / "server.log"
    with open(log, "w") as output:
        server = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-services",
             "--no-ui", "--analytics-off"],
            cwd=home, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + SERVER_TIMEOUT
    try:
        while not answers(f"{api}/health"):
            assert server.poll() is None, f"the Prefect server exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"the Prefect server did not answer:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        yield api
    finally:
        stop(server)
