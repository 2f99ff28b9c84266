"""How a flow runs from the command line: its arguments, plain log lines, and our errors as one-line messages."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from art2mus.errors import Art2MusError
from art2mus.logs import setup_logging


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


def flow_errors() -> tuple[type[Exception], ...]:
    """What a flow run reports as a message: our errors, the tracking store's, timeouts."""
    from mlflow.exceptions import MlflowException

    return Art2MusError, MlflowException, TimeoutError


def start_local_prefect_api() -> None:
    """Start Prefect's ephemeral API server now when no PREFECT_API_URL is set (the embedded default), so
    that one that does not come up is a message naming what to change, not a traceback from the flow call."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        return
    server = SubprocessASGIServer()  # one per process: the flow's client finds it running
    try:
        server.start()
    except RuntimeError as error:  # Prefect's words: timed out, with the server's exit code and output
        server.stop()
        detail = str(error).splitlines()[0][:500]
        raise Art2MusError(
            f"Prefect's local API server did not start in {settings.server.ephemeral.startup_timeout_seconds} s "
            f"({detail}); give it longer with PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS or point "
            "PREFECT_API_URL at a running server") from None


def report_failure(command: str, error: Exception) -> int:
    """`art2mus: <command>: <error>` on stderr; the exit code of a failed command."""
    print(f"art2mus: {command}: {error}", file=sys.stderr)
    return 1


def retrain_arguments(argv: Sequence[str] | None, default_wait: float) -> argparse.Namespace:
    """`python -m flows.retrain run [--wait S] [--quiet]` or `serve --name N --cron C [--timezone Z] [--wait S]`."""
    parser = argparse.ArgumentParser(prog="python -m flows.retrain", description="The retrain flow of this project.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="Retrain now.")
    run.add_argument("--wait", type=float, default=default_wait, help="Seconds to wait for another retrain.")
    run.add_argument("--quiet", action="store_true", help="Only warnings and errors.")
    serve = commands.add_parser("serve", help="Serve the flow on a cron schedule (needs PREFECT_API_URL).")
    serve.add_argument("--name", required=True)
    serve.add_argument("--cron", required=True)
    serve.add_argument("--timezone", default="UTC")
    serve.add_argument("--wait", type=float, default=default_wait)
    return parser.parse_args(argv)
