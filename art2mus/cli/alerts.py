"""`art2mus alerts webhook URL`, `art2mus alerts test`: where failure alerts of the retrain flow go."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from art2mus.alerts import WEBHOOK_BLOCK_TYPE, Alert, block_slug_name, send_alert, webhook_block
from art2mus.config import load_params
from art2mus.env import configure_environment, project_root
from art2mus.errors import Art2MusError
from art2mus.logs import setup_logging

app = typer.Typer(help="Failure alerts of the retrain flow (a Prefect notification block).", no_args_is_help=True)

Params = Annotated[Path, typer.Option("--params", help="The params file.")]


def fail(command: str, error: Exception) -> None:
    typer.echo(f"art2mus: alerts {command}: {error}", err=True)
    raise typer.Exit(1)


def prepared_environment() -> Path:
    """Project defaults (PREFECT_HOME in the project) and a start-up timeout fit for a busy machine."""
    return configure_environment(project_root())


@app.command()
def webhook(
    url: Annotated[str, typer.Argument(help="Where to POST the alert (JSON: subject, body, text).")],
    params_file: Params = Path("params.yaml"),
) -> None:
    """Save the Custom Webhook notification block named by alerts.block (replacing it if it exists).

    The URL is kept by Prefect (its database, or the server of PREFECT_API_URL), never in a tracked file.
    """
    setup_logging()
    prepared_environment()
    try:
        config = load_params(params_file).alerts
        if not config.block:
            raise Art2MusError(f"{params_file}: alerts.block is empty; set it to {WEBHOOK_BLOCK_TYPE}/NAME first")
        slug, name = block_slug_name(config.block)
        if slug != WEBHOOK_BLOCK_TYPE:
            raise Art2MusError(f"{params_file}: alerts.block is {config.block!r}, a {slug} block; this command "
                               f"makes a {WEBHOOK_BLOCK_TYPE} block: set alerts.block to {WEBHOOK_BLOCK_TYPE}/{name}")
        if not url.startswith(("http://", "https://")):
            raise Art2MusError(f"{url!r} is not an http(s) URL")
        webhook_block(url, name).save(name, overwrite=True)
    except Art2MusError as error:
        fail("webhook", error)
    typer.echo(f"alerts: saved the Prefect block {config.block}; a failed, timed-out or crashed retrain posts there")


@app.command("test")
def send_test(params_file: Params = Path("params.yaml")) -> None:
    """Send a test alert through the configured destination."""
    setup_logging()
    root = prepared_environment()
    try:
        config = load_params(params_file).alerts
        destination = send_alert(Alert(subject=f"art2mus test alert ({root.name})",
                                       body=f"art2mus: a test alert from the project {root.name} ({root})."), config)
    except Art2MusError as error:
        fail("test", error)
    typer.echo(f"alerts: sent a test alert to {destination}")
