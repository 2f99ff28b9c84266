"""`art2mus promote`, `rollback`, `history`: the champion alias of `art2mus`, by hand;
`art2mus registry migrate`: a store's `art2mus-aligner` copied to `art2mus`;
`art2mus tracking relocate`: a copied or moved project's store pointed at its own artifacts."""

from __future__ import annotations

import getpass
import json
import logging
import os
import sqlite3
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from art2mus.config import PARAMS_FILE, PromotionParams, load_params
from art2mus.env import configure_environment
from art2mus.errors import Art2MusError
from art2mus.logs import setup_logging
from art2mus.tracking.client import registry_client
from art2mus.tracking.licences import check_licences, version_licences
from art2mus.tracking.migration import Migration, migrate_former_name
from art2mus.tracking.registry import FORMER_MODEL_NAME, MODEL_NAME, get_version
from art2mus.tracking.registry import history as promotion_history
from art2mus.tracking.registry import promote as promote_version
from art2mus.tracking.registry import rollback as rollback_champion
from art2mus.tracking.runs import project_store, relocate_store
from art2mus.workspace import DEFAULT_ARTIFACTS, DEFAULT_DB, tracking_uri

By = Annotated[str | None, typer.Option("--by", help="Who does it (default: the OS user).")]
Reason = Annotated[str, typer.Option("--reason", help="Why, for the history.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors.")]

logger = logging.getLogger(__name__)

tracking_app = typer.Typer(no_args_is_help=True)
registry_app = typer.Typer(no_args_is_help=True)


@tracking_app.callback()
def tracking() -> None:
    """The project's MLflow tracking store."""  # a callback keeps `relocate` a subcommand


@registry_app.callback()
def registry() -> None:
    """The registered model `art2mus` in the project's MLflow store."""  # a callback keeps `migrate` a subcommand


def current_user() -> str:
    """The OS user name, or $USER, or 'unknown' (containers may have no passwd entry)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return os.environ.get("USER") or "unknown"


def fail(command: str, error: Exception) -> None:
    typer.echo(f"art2mus: {command}: {error}", err=True)
    raise typer.Exit(1)


def registry_errors() -> tuple[type[Exception], ...]:
    """What a registry command reports as a message: our errors and the tracking store's (unreachable,
    refused), which are about the environment, not bugs."""
    from mlflow.exceptions import MlflowException

    return Art2MusError, MlflowException


def intended_use(root: Path) -> str:
    """The project's licence policy (params.yaml `promotion.intended_use`); the default outside a project."""
    path = root / PARAMS_FILE
    if not path.is_file():
        policy = PromotionParams().intended_use
        logger.warning("no %s here: promoting under the default licence policy (intended_use: %s)", path, policy)
        return policy
    return load_params(path).promotion.intended_use


def promote(
    version: Annotated[str, typer.Argument(help="The model version to make champion.")],
    by: By = None,
    reason: Reason = "manual promotion",
    force: Annotated[bool, typer.Option(help="Promote even if its validation failed.")] = False,
    quiet: Quiet = False,
) -> None:
    """Make VERSION the champion (after loading it and generating once); the licence policy
    (params.yaml `promotion.intended_use`) is checked first and --force does not override it."""
    setup_logging(quiet)
    root = configure_environment()
    try:
        policy = intended_use(root)
        check_licences(version_licences(get_version(version, registry_client(root)).tags), policy, version)
        event = promote_version(version, by or current_user(), reason, force=force, root=root)
    except registry_errors() as error:
        fail("promote", error)
    if event is None:
        typer.echo(f"{MODEL_NAME}@champion: version {version} already; nothing recorded")
        return
    typer.echo(f"{MODEL_NAME}@champion: version {event.version} (was {event.previous or 'none'})")


def rollback(by: By = None, reason: Reason = "", quiet: Quiet = False) -> None:
    """Give the champion alias back to the previous champion."""
    setup_logging(quiet)
    root = configure_environment()
    try:
        event = rollback_champion(by or current_user(), reason, root=root)
    except registry_errors() as error:
        fail("rollback", error)
    typer.echo(f"{MODEL_NAME}@champion: version {event.version} (rolled back from {event.previous})")


def history(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Every promotion and rollback: when, who, from which version to which, on which metrics."""
    setup_logging(quiet=True)
    configure_environment()
    try:
        events = promotion_history()
    except registry_errors() as error:
        fail("history", error)
    if as_json:
        typer.echo(json.dumps([asdict(event) for event in events], indent=2))
        return
    if not events:
        typer.echo("no promotions yet")
    for event in events:
        metrics = ", ".join(f"{key}={value:.4g}" for key, value in sorted(event.metrics.items()))
        typer.echo(f"{event.at}  {event.kind:8}  {event.previous or '-':>4} -> {event.version:<4} by {event.by}"
                   f"{': ' + event.reason if event.reason else ''}{'  [' + metrics + ']' if metrics else ''}")


@tracking_app.command("relocate")
def relocate(dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would change; change nothing.")] = False,
             ) -> None:
    """Point a copied or moved project's mlflow.db at this project's mlartifacts/ (a run does it by itself
    before logging; this says what it changes, and which artifact folders the other project has and this
    one lacks)."""
    setup_logging(quiet=True)
    root = configure_environment()
    uri = tracking_uri(root)
    if project_store(uri, root) is None:
        typer.echo(f"the tracking store ({uri}) is not this project's {DEFAULT_DB}: nothing to relocate")
        return
    relocated = 0
    try:
        while (relocation := relocate_store(root, uri, dry_run=dry_run)) is not None:
            typer.echo(relocation.summary(dry_run))
            relocated += 1
            if dry_run:  # a dry run changes nothing: the next call would find the same
                break
    except sqlite3.Error as error:
        fail("tracking relocate", Art2MusError(f"{root / DEFAULT_DB}: {error}"))
    if not relocated:
        typer.echo(f"{root / DEFAULT_DB} keeps its artifacts in {root / DEFAULT_ARTIFACTS}: nothing to change")


def counted(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def migration_lines(migration: Migration) -> list[str]:
    """What a migration did, one line per kind of change."""
    if not migration.former_exists:
        return [f"registry migrate: no {FORMER_MODEL_NAME} in this tracking store; nothing to do"]
    if not migration.changed:
        return [f"registry migrate: {FORMER_MODEL_NAME} is already migrated to {MODEL_NAME}; nothing to do"]
    numbers = ", ".join(f"{former}->{new}" for former, new in migration.copied)
    lines = [f"registry migrate: {FORMER_MODEL_NAME} -> {MODEL_NAME}",
             f"copied {counted(len(migration.copied), 'version')} (old->new): {numbers or 'none'}"]
    moved = ", ".join(f"{alias} -> version {version}" for alias, version in migration.aliases.items())
    lines.append(f"aliases set on {MODEL_NAME}: {moved or 'none'}")
    lines.append(f"copied {counted(migration.history_events, 'history event')}, "
                 f"{counted(migration.other_tags, 'other model tag')}{', the description' if migration.description else ''}")
    if migration.deleted_former:
        lines.append(f"deleted {FORMER_MODEL_NAME} (--delete-old)")
    else:
        lines.append(f"left {FORMER_MODEL_NAME} in place, unchanged: nothing updates it any more "
                     "(delete it with --delete-old)")
    return lines


@registry_app.command("migrate")
def migrate(delete_old: Annotated[bool, typer.Option("--delete-old", help=f"Delete {FORMER_MODEL_NAME} once "
                                                     "copied.")] = False) -> None:
    """Copy the registered model art2mus-aligner (the model's former name) to art2mus: every version with its
    tags, the promotion history, the description and the champion/challenger aliases on the new version
    numbers. Safe to run again."""
    setup_logging(quiet=True)
    root = configure_environment()
    try:
        migration = migrate_former_name(registry_client(root), delete_former=delete_old)
    except registry_errors() as error:
        fail("registry migrate", error)
    for line in migration_lines(migration):
        typer.echo(line)
