"""`art2mus retrain` and `art2mus schedule`: the retrain flow (flows/retrain.py), now or on a cron schedule."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from art2mus.config import load_params
from art2mus.env import configure_environment, project_root
from art2mus.errors import Art2MusError
from art2mus.logs import setup_logging
from art2mus.processes import stop_process_group
from art2mus.tracking.client import registry_client
from art2mus.tracking.registry import MODEL_NAME, champion_version

DEFAULT_WAIT = 3600.0
DEPLOYMENT = "art2mus-retrain"
SERVER_STARTUP_SECONDS = 120
CHAMPION_URI = "models:/art2mus-aligner@champion"

Wait = Annotated[float, typer.Option("--wait", min=0, help="Seconds to wait for another retrain of this project "
                                     "to finish before giving up.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors.")]


class ExpectedErrorsWithoutTraceback(logging.Filter):
    """On the console our own errors (a failed gate, a busy project) are messages, not tracebacks;
    Prefect's API handler, which runs first, still records the traceback for the UI."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], Art2MusError):
            record.exc_info, record.exc_text = None, None
        return True


def setup_flow_logging(quiet: bool = False) -> None:
    """The project's plain log lines, without Prefect's per-request HTTP chatter or tracebacks of our errors."""
    setup_logging(quiet)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        handler.addFilter(ExpectedErrorsWithoutTraceback())


def fail(command: str, error: Exception) -> None:
    typer.echo(f"art2mus: {command}: {error}", err=True)
    raise typer.Exit(1)


def import_retrain_flow(root: Path):
    """flows.retrain of the project (flows/ is not installed; like stages/)."""
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module("flows.retrain")


def flow_errors() -> tuple[type[BaseException], ...]:
    """What a retrain reports as a message: our errors, the tracking store's, timeouts."""
    from mlflow.exceptions import MlflowException

    return Art2MusError, MlflowException, TimeoutError


def print_champion(root: Path) -> None:
    """The evaluation report, the champion and how to generate with it."""
    report = root / load_params(root / "params.yaml").evaluate.out_dir / "report" / "index.html"
    if report.is_file():
        typer.echo(f"evaluation report: {report}")
    champion = champion_version(registry_client(root))
    if champion is None:
        typer.echo(f"champion: none yet ({MODEL_NAME} has no champion)")
        return
    typer.echo(f"champion: {MODEL_NAME} version {champion} ({CHAMPION_URI})")
    typer.echo(f"generate with: art2mus generate IMAGE -o OUT --model {CHAMPION_URI}")


def retrain(wait: Wait = DEFAULT_WAIT, quiet: Quiet = False) -> None:
    """Retrain now: sync data, dvc repro, quality gates, register, decide, promote.

    A Prefect flow, run on an ephemeral Prefect unless PREFECT_API_URL points at a server.
    """
    setup_flow_logging(quiet)
    root = configure_environment(project_root())
    # A first start migrates Prefect's database; on a busy machine that outlasts Prefect's 20 s default.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    module = import_retrain_flow(root)
    started = time.monotonic()
    try:
        outcome = module.retrain(project_dir=str(root), wait_seconds=wait)
    except flow_errors() as error:
        fail("retrain", error)
    typer.echo(f"retrain: {outcome.message}")
    typer.echo(f"stages ran: {', '.join(outcome.ran) or 'none'}; skipped: {', '.join(outcome.skipped) or 'none'}")
    typer.echo(f"took {time.monotonic() - started:.1f} s (dvc repro {outcome.repro_seconds:.1f} s)")
    print_champion(root)


def server_answers(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@contextlib.contextmanager
def local_prefect_server(port: int) -> Iterator[str]:
    """A Prefect server with its scheduler on 127.0.0.1:`port` (state in PREFECT_HOME); reused if it answers.

    Schedules need one: Prefect's ephemeral server runs no scheduler.
    """
    api_url = f"http://127.0.0.1:{port}/api"
    if server_answers(api_url):
        yield api_url
        return
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port),
               "--no-ui", "--analytics-off"]
    server = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
    try:
        deadline = time.monotonic() + SERVER_STARTUP_SECONDS
        while not server_answers(api_url):
            if server.poll() is not None:
                raise Art2MusError(f"the Prefect server on port {port} exited ({server.returncode}): "
                                   f"{server.stderr.read()[-2000:]} (choose another with --port)")
            if time.monotonic() > deadline:
                raise Art2MusError(f"the Prefect server on port {port} did not answer within {SERVER_STARTUP_SECONDS} s")
            time.sleep(0.5)
        typer.echo(f"schedule: started a Prefect server at {api_url} (state in {os.environ.get('PREFECT_HOME')})")
        yield api_url
    finally:
        stop_process_group(server, grace=30)


def schedule(
    cron: Annotated[str, typer.Option(help='When to retrain, as a cron expression, e.g. "0 3 * * 1" (Mondays 03:00).')],
    timezone: Annotated[str, typer.Option(help="Time zone of the cron expression.")] = "UTC",
    name: Annotated[str, typer.Option(help="Deployment name.")] = DEPLOYMENT,
    port: Annotated[int, typer.Option(help="Port of the local Prefect server started when PREFECT_API_URL is unset.")]
    = 4200,
    wait: Wait = DEFAULT_WAIT,
) -> None:
    """Serve the retrain flow on a cron schedule until interrupted (flow.serve).

    Uses the Prefect server of PREFECT_API_URL, else starts one on 127.0.0.1 with its state in
    PREFECT_HOME (Prefect's ephemeral mode runs no scheduler).
    """
    setup_flow_logging()
    root = configure_environment(project_root())
    api_url = os.environ.get("PREFECT_API_URL")
    try:
        with contextlib.nullcontext(api_url) if api_url else local_prefect_server(port) as url:
            # In the environment, before Prefect is imported: the runner's threads read their settings from it.
            os.environ["PREFECT_API_URL"] = url
            from prefect.client.schemas.schedules import CronSchedule

            try:
                cron_schedule = CronSchedule(cron=cron, timezone=timezone)
            except ValueError as error:
                raise Art2MusError(f"--cron {cron!r} / --timezone {timezone!r}: {error}") from None
            module = import_retrain_flow(root)
            typer.echo(f"schedule: serving {name} ({cron} {timezone}) on {url}; Ctrl-C stops it")
            module.retrain.serve(name=name, schedule=cron_schedule,
                                 parameters={"project_dir": str(root), "wait_seconds": wait},
                                 tags=["art2mus"], print_starting_message=False)
    except Art2MusError as error:
        fail("schedule", error)
