"""What the tests share: the project's paths, copies of the project, its environment, commands run in it
and local servers. Imported by the tests and by conftest.py (which holds only fixtures and hooks)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from art2mus.env import project_environment

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
BIN = Path(sys.executable).parent

SERVER_TIMEOUT = 180  # seconds a test server may take to answer
COMMAND_TIMEOUT = 1800  # seconds any other `run` command may take (as a test call: pyproject's `timeout`)
OUTPUT_TAIL = 3000  # characters of a failed command's output shown

# The git identity of the project copies' commits.
AUTHOR = {"GIT_AUTHOR_NAME": "art2mus tests", "GIT_AUTHOR_EMAIL": "tests@art2mus.invalid",
          "GIT_COMMITTER_NAME": "art2mus tests", "GIT_COMMITTER_EMAIL": "tests@art2mus.invalid"}


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


# An evaluation that keeps how the promotion decision's per-item correspondence scores are drawn (k, draws,
# t_range, seed, split) on the first 32 test items, and skimps on what the decision does not read (generation
# steps, baselines, FAD resamples, the planted-factor estimator): for tests that re-run `evaluate`.
QUICK_EVALUATE = {"max_items": 32, "steps": 2, "untrained_seeds": [1], "fad_resamples": 20, "planted_tracks": 32,
                  "report_items": 2}
# The end-to-end run is the embedded default (the learning run the model tests assert on) with the prior's
# and the aligner's budgets cut to 800 and 900 steps (the default: 1,200 and 1,200), which keep every planted
# factor audible (three aligner seeds: README). The default's budgets here made the whole suite 10 minutes
# longer (2,563 s against 1,958 s on one 2-core machine: this fixture and the retrain flow's retraining).
# The default's own figures are `make run`'s and its seeds' (README).
E2E_PARAMS: dict[str, dict] = {"prior": {"steps": 800}, "train": {"steps": 900}}


def set_params(root: Path, override: dict) -> None:
    """Merge `override` into the project's params.yaml."""
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(merge(yaml.safe_load(path.read_text()), override), sort_keys=False))


def copy_project(destination: Path, params_override: dict) -> Path:
    """Copy the project into `destination` as a fresh git repo with its own author identity."""
    for name in project_files():
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    set_params(destination, params_override)
    git = ["git", "-c", f"user.name={AUTHOR['GIT_AUTHOR_NAME']}", "-c", f"user.email={AUTHOR['GIT_AUTHOR_EMAIL']}"]
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=destination, check=True)
    subprocess.run([*git, "add", "-A"], cwd=destination, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "test copy"], cwd=destination, check=True)
    return destination


def project_env(root: Path) -> dict[str, str]:
    """The environment `make` gives (art2mus.env.project_environment), with the tests' git author."""
    return {**project_environment(root), **AUTHOR}


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL a process started with start_new_session=True and everything it started (DVC's stages)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run(command: list[str], root: Path, check: bool = True,
        timeout: float | None = COMMAND_TIMEOUT) -> subprocess.CompletedProcess:
    """`command` in `root` with the project's environment; on a timeout or an interrupted test (a
    pytest-timeout) its whole process group is killed, so no stage keeps running behind the test."""
    with subprocess.Popen(command, cwd=root, env=project_env(root), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, start_new_session=True) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(process)
            try:
                stdout, stderr = process.communicate(timeout=60)
            except subprocess.TimeoutExpired:  # a process outside the group still holds the pipes
                stdout, stderr = "", ""
            raise AssertionError(f"{' '.join(command)} did not finish within {timeout} s and was killed:\n"
                                 f"{stdout[-OUTPUT_TAIL:]}\n{stderr[-OUTPUT_TAIL:]}") from None
        except BaseException:
            kill_group(process)
            raise
    result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


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
