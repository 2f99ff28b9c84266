"""`art2mus gc [--yes]`: remove DVC cache objects and MLflow artifacts no kept model version references."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.filesize import decimal

from art2mus.config import load_params
from art2mus.env import configure_environment, project_root
from art2mus.errors import Art2MusError
from art2mus.logs import setup_logging
from art2mus.tracking.client import registry_client
from art2mus.tracking.gc import collect_garbage


def size(n_bytes: int) -> str:
    return decimal(n_bytes)


def relative(path: str, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return path


def print_plan(plan, root: Path) -> None:
    """The kept versions, then every object and artifact folder that goes (or would go), with sizes."""
    verb = "removed" if plan.deleted else "would remove"
    kept = ", ".join(f"{version} ({why})" for version, why in plan.kept.items()) or "none (no champion or challenger)"
    typer.echo(f"gc: keeping versions: {kept}; {plan.kept_objects} DVC object ids kept (their lineage and the "
               "workspace's dvc.lock)")
    if plan.cache_objects:
        typer.echo(f"{verb} {len(plan.cache_objects)} DVC cache object(s), "
                   f"{size(sum(item.size for item in plan.cache_objects))}:")
        for item in plan.cache_objects:
            typer.echo(f"  {size(item.size):>10}  {relative(item.path, root)}")
    if plan.artifacts:
        typer.echo(f"{verb} the MLflow artifacts of {len({item.version for item in plan.artifacts})} unkept version(s), "
                   f"{size(sum(item.size for item in plan.artifacts))}:")
        for item in plan.artifacts:
            typer.echo(f"  {size(item.size):>10}  version {item.version} {item.kind} {item.ref} "
                       f"({item.files} file(s)): {item.uri}")
    if plan.empty:
        typer.echo("gc: nothing to remove")
    elif plan.deleted:
        typer.echo(f"gc: freed {size(plan.total_size)}")
    else:
        typer.echo(f"gc: dry run, nothing deleted ({size(plan.total_size)} would be freed); "
                   "run `art2mus gc --yes` to delete")


def gc(
    yes: Annotated[bool, typer.Option("--yes", help="Delete (the default is a dry run that only lists).")] = False,
    params_file: Annotated[Path, typer.Option("--params", help="The params file.")] = Path("params.yaml"),
) -> None:
    """Remove DVC cache objects and MLflow artifacts that no kept model version references.

    Kept: the champion, the challenger, gc.keep_versions previous champions (rollback targets) and the
    workspace's dvc.lock, each with its whole lineage. Dry run unless --yes.
    """
    from mlflow.exceptions import MlflowException

    setup_logging()
    root = configure_environment(project_root())
    try:
        config = load_params(params_file).gc
        plan = collect_garbage(root, config, registry_client(root), delete=yes)
    except (Art2MusError, MlflowException) as error:
        typer.echo(f"art2mus: gc: {error}", err=True)
        raise typer.Exit(1) from None
    print_plan(plan, root)
