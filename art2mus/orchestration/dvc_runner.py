"""DVC driven as a subprocess: `dvc pull` from a remote that answers, `dvc repro` with its output parsed.

The flow runs DVC as a command (not its Python API) so a stage runs exactly as `dvc repro` typed by
hand runs it, in its own process group that dies with the flow. What DVC printed is the only account
of which stages ran, which it skipped and which failed, so that output is parsed here, in one place.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from art2mus.errors import Art2MusError
from art2mus.orchestration.retries import TransientFailure
from art2mus.processes import stop_process_group

REMOTE_PROBE_SECONDS = 5.0
DEFAULT_PORTS = {"http": 80, "https": 443, "s3": 443, "ssh": 22, "webdav": 80, "webdavs": 443, "hdfs": 8020}
RUNNING_STAGE = re.compile(r"^Running stage '([^']+)':")
SKIPPED_STAGE = re.compile(r"^Stage '([^']+)' (?:didn't change, skipping|is cached - skipping run)")
FAILED_STAGE = re.compile(r"failed to reproduce '([^']+)'")

Logger = logging.Logger | logging.LoggerAdapter


class ReproFailed(Art2MusError):
    """`dvc repro` stopped; `stage` is the stage that failed (None when DVC itself failed)."""

    def __init__(self, stage: str | None, output: list[str]) -> None:
        starts = [i for i, line in enumerate(output) if RUNNING_STAGE.search(line)]
        tail = "\n".join(output[starts[-1] if starts else 0:][-30:])  # the failing stage's own output
        super().__init__(f"dvc repro failed{f' in stage {stage!r}' if stage else ''}:\n{tail}")
        self.stage = stage
        self.output = output


@dataclass
class ReproReport:
    ran: list[str]
    skipped: list[str]
    seconds: float


def run_logged(command: list[str], root: Path, logger: Logger) -> tuple[int, list[str]]:
    """Run `command` in `root`, logging its output line by line; returns (exit code, lines).

    The command gets its own process group, killed on a timeout or an interrupt, so a stage never
    outlives its flow. The wait polls so that Prefect's timeout can interrupt it.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, errors="replace", start_new_session=True)
    lines: list[str] = []

    def drain() -> None:
        assert process.stdout is not None  # stdout=PIPE
        for line in process.stdout:
            line = line.rstrip()
            lines.append(line)
            if line:
                logger.info("%s", line)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        while process.poll() is None:
            time.sleep(0.1)
    except BaseException:
        stop_process_group(process)
        raise
    reader.join(timeout=10)
    return process.returncode, lines


def dvc(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "dvc", *arguments]


# --- the remote -------------------------------------------------------------------------------------

def default_remote(root: Path) -> tuple[str, dict[str, Any]] | None:
    """The default DVC remote's name and settings (project and local config), None when unset."""
    from dvc.config import Config, ConfigError  # DVC's config pulls in most of DVC: only when syncing

    dvc_dir = root / ".dvc"
    try:
        config = Config(dvc_dir=str(dvc_dir), local_dvc_dir=str(dvc_dir))
    except ConfigError as error:
        raise Art2MusError(f"{dvc_dir / 'config'}: {error}") from None
    name = config["core"].get("remote")
    if not name:
        return None
    if name not in config["remote"]:
        raise Art2MusError(f"{dvc_dir / 'config'}: the default remote {name!r} is not defined")
    return name, dict(config["remote"][name])


def is_local_url(url: str) -> bool:
    """A directory on this machine (DVC resolves relative paths), not a service."""
    scheme = urlsplit(url).scheme
    return scheme in ("", "file") or len(scheme) == 1  # one letter: a Windows drive


def remote_endpoint(remote: dict[str, Any]) -> tuple[str, int] | None:
    """The host and port a remote's data comes from, None when it cannot be told from the config."""
    url = remote["url"]
    scheme = urlsplit(url).scheme
    if remote.get("endpointurl"):
        endpoint = urlsplit(remote["endpointurl"])
        return (endpoint.hostname, endpoint.port or DEFAULT_PORTS.get(endpoint.scheme, 443)) if endpoint.hostname else None
    if scheme == "s3":
        return "s3.amazonaws.com", 443
    if scheme in ("gs", "gcs"):
        return "storage.googleapis.com", 443
    if scheme == "azure":
        account = remote.get("account_name")
        return (f"{account}.blob.core.windows.net", 443) if account else None
    host = urlsplit(url).hostname
    return (host, urlsplit(url).port or DEFAULT_PORTS.get(scheme, 443)) if host else None


def probe(endpoint: tuple[str, int], seconds: float = REMOTE_PROBE_SECONDS) -> str | None:
    """None when a TCP connection to the endpoint opens, else why not."""
    try:
        with socket.create_connection(endpoint, timeout=seconds):
            return None
    except OSError as error:
        return str(error) or type(error).__name__


def pull(root: Path, logger: Logger) -> str:
    """`dvc pull` from the default remote when it is a service that answers; otherwise say why not."""
    remote = default_remote(root)
    if remote is None:
        message = "no default DVC remote: nothing to pull"
    elif is_local_url(remote[1]["url"]):
        message = (f"the default DVC remote {remote[0]!r} is a local folder ({remote[1]['url']}): nothing to pull, "
                   "the local cache is the data")
    else:
        name, settings = remote
        endpoint = remote_endpoint(settings)
        if endpoint is not None and (problem := probe(endpoint)) is not None:
            message = (f"the DVC remote {name!r} ({settings['url']}) is unreachable at {endpoint[0]}:{endpoint[1]} "
                       f"({problem}): reproducing from the local cache")
            logger.warning("%s", message)
            return message
        logger.info("pulling from the DVC remote %r (%s)", name, settings["url"])
        code, lines = run_logged(dvc("pull", "--allow-missing"), root, logger)
        if code != 0:
            raise TransientFailure(f"dvc pull from {name!r} failed (exit {code}):\n" + "\n".join(lines[-20:]))
        message = f"pulled from the DVC remote {name!r}"
    logger.info("%s", message)
    return message


# --- dvc repro --------------------------------------------------------------------------------------

def parse_repro(lines: list[str]) -> tuple[list[str], list[str], str | None]:
    """(stages that ran, stages DVC skipped, the stage that failed) from `dvc repro`'s output."""
    ran, skipped, failed = [], [], None
    for line in lines:
        if match := RUNNING_STAGE.search(line):
            ran.append(match.group(1))
        elif match := SKIPPED_STAGE.search(line):
            skipped.append(match.group(1))
        elif match := FAILED_STAGE.search(line):
            failed = match.group(1)
    return ran, skipped, failed


def repro(root: Path, logger: Logger) -> ReproReport:
    """`dvc repro`: run what changed, skip the rest; ReproFailed when a stage (or DVC) fails."""
    started = time.monotonic()
    code, lines = run_logged(dvc("repro"), root, logger)
    ran, skipped, failed = parse_repro(lines)
    if code != 0:
        raise ReproFailed(failed, lines)
    report = ReproReport(ran, skipped, time.monotonic() - started)
    logger.info("reproduce: ran %s; skipped %s (%.1f s)", ", ".join(ran) or "nothing",
                ", ".join(skipped) or "nothing", report.seconds)
    return report

