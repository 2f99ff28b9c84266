"""`art2mus retrain` and `art2mus schedule`: the retrain flow (flows/retrain.py), now or on a cron schedule.

The flow runs as `python -m flows.retrain run|serve` in the project root, a child process, as DVC runs
`python -m stages.<name>`: flows/ is the project's top layer, not part of the installed library, so the
library neither imports it (the import contracts: flows -> stages -> art2mus) nor edits sys.path to reach it.
"""

from __future__ import annotations

import contextlib
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
from art2mus.orchestration.console import flow_errors
from art2mus.processes import stop_process_group
from art2mus.tracking.client import registry_client
from art2mus.tracking.registry import CHAMPION_URI, MODEL_NAME, champion_version, require_registry

DEFAULT_WAIT = 3600.0
DEPLOYMENT = "art2mus-retrain"
SERVER_STARTUP_SECONDS = 120
FLOW_MODULE = "flows.retrain"

Wait = Annotated[float, typer.Option("--wait", min=0, help="Seconds to wait for another retrain of this project "
                                     "to finish before giving up.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors.")]


def fail(command: str, error: Exception) -> None:
    typer.echo(f"art2mus: {command}: {error}", err=True)
    raise typer.Exit(1)


def run_flow(root: Path, arguments: list[str]) -> int:
    """`python -m flows.retrain ARGUMENTS` in the project root; its exit code. It reports its own errors."""
    if not (root / "flows" / "retrain.py").is_file():
        raise Art2MusError(f"{root}: no flows/retrain.py (run art2mus in the project's checkout)")
    flow = subprocess.Popen([sys.executable, "-m", FLOW_MODULE, *arguments], cwd=root)
    try:
        return flow.wait()
    except KeyboardInterrupt:  # Ctrl-C reached the flow too (one process group): let it stop cleanly
        return flow.wait()


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
    setup_logging(quiet)
    root = configure_environment(project_root())
    try:
        require_registry(registry_client(root))  # at once, rather than from the flow after Prefect has started
        code = run_flow(root, ["run", "--wait", str(wait), *(["--quiet"] if quiet else [])])
        if code != 0:
            raise typer.Exit(code)
        print_champion(root)
    except flow_errors() as error:
        fail("retrain", error)


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
                output = server.stderr.read() if server.stderr is not None else ""
                raise Art2MusError(f"the Prefect server on port {port} exited ({server.returncode}): "
                                   f"{output[-2000:]} (choose another with --port)")
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
    setup_logging()
    root = configure_environment(project_root())
    api_url = os.environ.get("PREFECT_API_URL")
    try:
        with contextlib.nullcontext(api_url) if api_url else local_prefect_server(port) as url:
            # In the flow's environment: Prefect's runner reads its settings from it when it starts.
            os.environ["PREFECT_API_URL"] = url
            code = run_flow(root, ["serve", "--name", name, "--cron", cron, "--timezone", timezone,
                                   "--wait", str(wait)])
    except Art2MusError as error:
        fail("schedule", error)
    if code != 0:
        raise typer.Exit(code)
