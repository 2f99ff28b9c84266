"""The MLflow run every stage logs its params, metrics and small artifacts through.

The project's own store (`mlflow.db` in the project) keeps its artifacts in the project's
`mlartifacts/`. MLflow records that place as an absolute path (it resolves a relative one when the
experiment is created), so a copy of the project, or a clone given its `mlflow.db`, still names the
original's folder. Before a run is created here, a store of this project whose locations name another
project's `mlartifacts/` is relocated to this project (`relocate_store`, also `art2mus tracking
relocate`): every recorded location under the other project is rewritten to the same place under this
one, and the log says what changed and which artifact folders the other project has and this one lacks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel

from art2mus.env import configure_environment, project_root
from art2mus.workspace import DEFAULT_ARTIFACTS, DEFAULT_DB, tracking_uri

logger = logging.getLogger(__name__)

PARENT_RUN_ENV = "ART2MUS_PARENT_RUN_ID"  # set by a flow so stage runs nest under it
# Where MLflow's SQLite schema records a place on disk (table, column); every other column is left as logged.
LOCATION_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                    ("logged_models", "artifact_location"), ("model_versions", "storage_location"),
                    ("model_versions", "source"))
ARTIFACT_FOLDERS = (("runs", "artifact_uri"), ("logged_models", "artifact_location"))


def process_rank() -> int:
    """This process's global rank in a torchrun/accelerate launch (their `RANK`), 0 when launched alone.

    Read from the environment the launcher sets, so it is known before (and without) any process group.
    """
    return int(os.environ.get("RANK", "0"))


def is_local_store(uri: str) -> bool:
    return uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested params to dotted keys: {'ratios': {'train': 0.7}} -> {'ratios.train': 0.7}."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def git_state(root: Path) -> dict[str, str]:
    """The commit and whether the work tree differs from it; empty outside a git repository."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"git.commit": commit, "git.dirty": str(bool(status.strip())).lower()}


@dataclass(frozen=True)
class Relocation:
    """What `relocate_store` changed (or, as a dry run, would change)."""

    old_root: Path  # the project the store's locations named
    new_root: Path  # this project
    changed: dict[str, int] = field(default_factory=dict)  # "table.column" -> rows rewritten
    missing: list[str] = field(default_factory=list)  # folders under the old mlartifacts/ this project lacks

    def summary(self, dry_run: bool = False) -> str:
        rows = ", ".join(f"{count} {column}" for column, count in self.changed.items() if count)
        text = (f"{self.new_root / DEFAULT_DB} kept its artifacts in {self.old_root / DEFAULT_ARTIFACTS} (the project "
                f"this one was copied or moved from); {'would relocate' if dry_run else 'relocated'} to "
                f"{self.new_root / DEFAULT_ARTIFACTS}: {rows}")
        if self.missing:
            shown = "\n  ".join(self.missing[:20]) + (f"\n  ... and {len(self.missing) - 20} more"
                                                     if len(self.missing) > 20 else "")
            text += (f".\n{len(self.missing)} artifact folder(s) are in {self.old_root / DEFAULT_ARTIFACTS} but not in "
                     f"{self.new_root / DEFAULT_ARTIFACTS}; copy them over to read them here:\n  {shown}")
        return text


def project_store(uri: str, root: Path) -> Path | None:
    """The SQLite file of the tracking store when it is this project's own (root/mlflow.db), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    database = Path(unquote(uri.removeprefix("sqlite:///")))
    return database if database.resolve() == (root / DEFAULT_DB).resolve() else None


def location_path(location: str) -> Path | None:
    """The local path a recorded location names (a file: URI or an absolute path), None for anything else."""
    if location.startswith("file:"):
        return Path(unquote(urlsplit(location).path))
    return Path(location) if location.startswith("/") else None


def foreign_roots(database: sqlite3.Connection, root: Path) -> list[Path]:
    """The other projects whose `mlartifacts/` the store's experiments name (the layout `ensure_experiment` makes)."""
    if not database.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'experiments'").fetchone():
        return []  # a store MLflow has not set up yet
    roots = []
    for (location,) in database.execute("SELECT artifact_location FROM experiments"):
        path = location_path(location or "")
        if path is not None and path.name == DEFAULT_ARTIFACTS and path.parent.resolve() != root.resolve():
            roots.append(path.parent)
    return sorted(set(roots))


def location_columns(database: sqlite3.Connection) -> list[tuple[str, str]]:
    """LOCATION_COLUMNS this store's schema has."""
    present = []
    for table, column in LOCATION_COLUMNS:
        if column in {row[1] for row in database.execute(f"PRAGMA table_info({table})")}:
            present.append((table, column))
    return present


def relocate_store(root: Path, uri: str | None = None, dry_run: bool = False) -> Relocation | None:
    """Point the locations this project's store records under another project's folder at the same places
    in this project (None: nothing to relocate, or the store is not this project's own).

    Rewrites the paths MLflow keeps in its SQLite schema (LOCATION_COLUMNS) in one transaction; the
    artifacts themselves are not moved: a copied project has its own copy of them, and the ones the
    other project has and this one lacks are listed in `missing`.
    """
    root = root.resolve()
    database_file = project_store(uri or tracking_uri(root), root)
    if database_file is None or not database_file.is_file():
        return None
    with contextlib.closing(sqlite3.connect(database_file, timeout=60, isolation_level=None)) as database:
        if not foreign_roots(database, root):  # the common case, answered without taking the write lock
            return None
        database.execute("BEGIN IMMEDIATE")  # one writer at a time; a concurrent relocation finds nothing left
        try:
            old_roots = foreign_roots(database, root)
            if not old_roots:
                database.execute("ROLLBACK")
                return None
            old_root = old_roots[0]  # one per call: a store copied twice over relocates in turns
            relocation = rewrite_locations(database, old_root, root)
            database.execute("ROLLBACK" if dry_run else "COMMIT")
        except BaseException:
            if database.in_transaction:
                database.execute("ROLLBACK")
            raise
    return relocation


def rewrite_locations(database: sqlite3.Connection, old_root: Path, root: Path) -> Relocation:
    """Rewrite every location under `old_root` (as a file: URI or a path) to the same place under `root`."""
    prefixes = [(f"{old_root.as_uri()}/", f"{root.as_uri()}/"), (f"{old_root}/", f"{root}/")]
    missing = []
    for table, column in ARTIFACT_FOLDERS:
        if (table, column) not in location_columns(database):
            continue
        for (location,) in database.execute(f"SELECT {column} FROM {table}"):
            path = location_path(location or "")
            if path is None or not path.is_relative_to(old_root / DEFAULT_ARTIFACTS):
                continue
            relative = path.relative_to(old_root / DEFAULT_ARTIFACTS)
            if path.exists() and not (root / DEFAULT_ARTIFACTS / relative).exists():
                missing.append(relative.as_posix())
    changed = {}
    for table, column in location_columns(database):
        count = 0
        for old, new in prefixes:
            count += database.execute(
                f"UPDATE {table} SET {column} = ? || substr({column}, ?) WHERE substr({column}, 1, ?) = ?",
                (new, len(old) + 1, len(old), old)).rowcount
        changed[f"{table}.{column}"] = count
    return Relocation(old_root=old_root, new_root=root, changed=changed, missing=sorted(missing))


def relocate_if_moved(root: Path, uri: str) -> None:
    """Relocate the project's own store when it names another project's artifacts, saying what changed;
    every way into the store (a run, the registry's client) goes through here first."""
    while (relocation := relocate_store(root, uri)) is not None:
        logger.warning("tracking: %s", relocation.summary())


def ensure_experiment(name: str, uri: str, root: Path) -> str:
    """The experiment's id, creating it (artifacts inside the project for local stores); a store of this
    project that still names another project's artifacts is relocated first (`relocate_store`)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    relocate_if_moved(root, uri)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = (root / DEFAULT_ARTIFACTS).as_uri() if is_local_store(uri) else None
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except MlflowException:
        # Another process created it between our lookup and our create.
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


@dataclass
class StageRun:
    """A handle on the active stage run; an inactive one (a non-zero rank's) logs nothing."""

    run_id: str
    stage: str
    active: bool = True

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if not self.active:
            return
        import mlflow

        mlflow.log_metrics({key: float(value) for key, value in metrics.items()}, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Log a file, or every file of a folder (under `artifact_path`)."""
        if not self.active:
            return
        import mlflow

        if Path(path).is_dir():
            mlflow.log_artifacts(str(path), artifact_path=artifact_path)
        else:
            mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        if not self.active:
            return
        import mlflow

        mlflow.log_dict(dict(data), artifact_file)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self.active:
            return
        import mlflow

        mlflow.set_tags({key: str(value) for key, value in tags.items()})


@contextlib.contextmanager
def stage_run(
    stage: str,
    params: BaseModel | Mapping[str, Any],
    experiment: str = "art2mus",
    root: Path | None = None,
) -> Iterator[StageRun]:
    """Start an MLflow run for `stage`, log its params and code version, end it FAILED on error.

    Under a multi-process launch only rank 0 tracks: other ranks get an inactive handle and make no
    MLflow call at all (one run per stage, no concurrent writers to the store).
    """
    root = configure_environment(root or project_root())
    if process_rank() != 0:
        yield StageRun(run_id="", stage=stage, active=False)
        return
    import mlflow

    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    experiment_id = ensure_experiment(experiment, uri, root)
    values = params.model_dump(mode="json") if isinstance(params, BaseModel) else dict(params)
    tags = {"art2mus.stage": stage, **git_state(root)}
    parent = os.environ.get(PARENT_RUN_ENV)
    if parent:
        tags["mlflow.parentRunId"] = parent
    with mlflow.start_run(experiment_id=experiment_id, run_name=stage, tags=tags) as run:
        mlflow.log_params({key: str(value)[:6000] for key, value in flatten(values).items()})
        logger.info("%s: MLflow run %s (%s)", stage, run.info.run_id, uri)
        yield StageRun(run_id=run.info.run_id, stage=stage)
