"""`art2mus gc`: remove DVC cache objects and MLflow artifacts that no kept model version references.

Kept: the champion, the challenger, the `gc.keep_versions` newest previous champions the rollback
stack (the registry's history) can return to, and whatever the workspace references (its dvc.lock
and .dvc files; the train record's MLflow run). A kept version keeps its whole lineage: every data
hash recorded on it (a directory's `.dir` manifest and every file object it lists), its logged
model, its register run's and its train run's artifacts.

What goes:
- DVC: objects of the local cache (`.dvc/cache/files/md5`) outside that keep-set (`.dir` manifests
  read from the cache, else the default remote), removed with
  DVC's own garbage collector (`dvc_data`'s gc with the explicit keep-set) under DVC's repo lock,
  so no `dvc` command runs meanwhile. The DVC remote is not touched: it still holds every version's
  data (`dvc gc --cloud` is a separate, deliberate decision).
- MLflow: for each registered version that is not kept, its logged model's artifacts and its
  train run's artifacts, deleted through MLflow's artifact repository (local folder, S3, ...),
  unless a kept version or the workspace uses the same ones. The version, its runs, their tags and
  the register run's small documents (lineage.json, the model card) stay: the audit trail. The
  version is tagged `gc.artifacts_deleted_at` and can no longer be loaded or promoted.

A dry run (the default) computes exactly what `--yes` deletes and deletes nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from art2mus.config import GcParams
from art2mus.errors import Art2MusError
from art2mus.locks import file_lock
from art2mus.tracking.registry import (
    CHALLENGER,
    CHAMPION,
    MODEL_NAME,
    aliases,
    champion_stack,
    history,
    require_registry,
    utc_now,
)
from art2mus.workspace import DATA_HASHES_TAG, RETRAIN_LOCK, TRAIN_RECORD, TRAIN_RUN_TAG, TRAINING_DATA_TAG, TrainRecord

logger = logging.getLogger(__name__)

DELETED_TAG = "gc.artifacts_deleted_at"
LINEAGE_TAGS = (DATA_HASHES_TAG, TRAINING_DATA_TAG)


@dataclass(frozen=True)
class CacheObject:
    """A DVC cache object that nothing kept references."""

    oid: str
    path: str
    size: int


@dataclass(frozen=True)
class ArtifactRoot:
    """The artifacts of one logged model or run of an unkept version."""

    version: str
    kind: str  # "logged model" or "train run"
    ref: str  # model id or run id
    uri: str
    files: int
    size: int


@dataclass
class GcPlan:
    """What gc keeps and what it removes (or, in a dry run, would remove)."""

    kept: dict[str, str]  # version -> why
    cache_objects: list[CacheObject] = field(default_factory=list)
    artifacts: list[ArtifactRoot] = field(default_factory=list)
    kept_objects: int = 0
    deleted: bool = False

    @property
    def total_size(self) -> int:
        return sum(item.size for item in self.cache_objects) + sum(item.size for item in self.artifacts)

    @property
    def empty(self) -> bool:
        return not self.cache_objects and not self.artifacts


def kept_versions(client, config: GcParams) -> dict[str, str]:
    """version -> why it is kept: champion, challenger, previous champions a rollback returns to."""
    current = aliases(client)
    kept: dict[str, str] = {}
    if CHAMPION in current:
        kept[current[CHAMPION]] = "champion"
    if CHALLENGER in current:
        kept.setdefault(current[CHALLENGER], "challenger")
    previous = [version for version in reversed(champion_stack(history(client))) if version != current.get(CHAMPION)]
    for depth, version in enumerate(dict.fromkeys(previous), start=1):
        if depth > config.keep_versions:
            break
        kept.setdefault(version, f"previous champion ({depth} rollback{'s' if depth > 1 else ''} back)")
    return kept


def registered_versions(client) -> list[Any]:
    return sorted(client.search_model_versions(f"name = '{MODEL_NAME}'"), key=lambda found: int(found.version))


def recorded_hashes(model_version) -> dict[str, str]:
    """path -> md5 of the data the version's lineage recorded (dvc.lock hashes at registration)."""
    hashes: dict[str, str] = {}
    for tag in LINEAGE_TAGS:
        raw = model_version.tags.get(tag)
        if not raw:
            continue
        try:
            hashes.update(json.loads(raw))
        except json.JSONDecodeError:
            raise Art2MusError(f"registry: {MODEL_NAME} version {model_version.version}: tag {tag} is not valid JSON; "
                               "gc cannot tell which data it keeps") from None
    return hashes


def cached_outputs(repo) -> dict[str, str]:
    """path -> md5 of the workspace's outputs that DVC caches (dvc.lock's stage outs, .dvc files), the
    ones with `cache: false` left out: their objects never reach the cache."""
    return {str(out.def_path): out.hash_info.value for out in repo.index.outs
            if out.use_cache and out.hash_info and out.hash_info.value and out.hash_info.name == "md5"}


def default_remote_odb(repo):
    """The default DVC remote's object store, None when there is none or it cannot be opened."""
    from dvc.exceptions import DvcException

    try:
        return repo.cloud.get_remote_odb() if repo.config["core"].get("remote") else None
    except DvcException as error:
        logger.warning("gc: the default DVC remote cannot be opened (%s): manifests are read from the cache only",
                       error)
        return None


def load_manifest(oid: str, stores: list) -> list[str] | None:
    """The object ids a `.dir` manifest lists, read from the first store that has it; None if none has."""
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.tree import Tree

    for store in stores:
        try:
            tree = Tree.load(store, HashInfo("md5", oid))
        except Exception as error:  # noqa: BLE001 - absent, unreadable or unreachable: try the next store
            logger.debug("gc: manifest %s not read from %s: %s", oid, store.path, error)
            continue
        return [entry.value for _, _, entry in tree if entry is not None]
    return None


def expand(hashes: dict[str, str], stores: list, cached_paths: set[str], owner: str) -> set[str]:
    """The object ids of `hashes` plus every file a `.dir` manifest among them lists (from the cache,
    else the remote).

    A manifest found nowhere is fine for a path DVC does not cache (a `cache: false` output, a folder
    inside another output, raw input): its files are not in the cache by it. For a cached output it
    stops gc: without the manifest its files would look unreferenced.
    """
    oids: set[str] = set()
    for path, oid in hashes.items():
        oids.add(oid)
        if not oid.endswith(".dir"):
            continue
        listed = load_manifest(oid, stores if path in cached_paths else stores[:1])
        if listed is not None:
            oids.update(listed)
        elif path in cached_paths:
            raise Art2MusError(f"gc: {owner}: the directory manifest of {path} ({oid}) is neither in the DVC cache "
                               "nor in the default remote, so gc cannot tell which files it lists; fetch it "
                               "(dvc fetch) and run gc again")
    return oids


def unreferenced_objects(odb, keep: set[str]) -> list[CacheObject]:
    """Every object of the cache outside `keep`, with its size."""
    found = []
    for oid in sorted(odb.all()):
        if oid in keep:
            continue
        path = odb.oid_to_path(oid)
        found.append(CacheObject(oid, path, os.path.getsize(path) if os.path.isfile(path) else 0))
    return found


def logged_model_id(model_version) -> str | None:
    """The version's logged model (MLflow 3: `models:/m-...` source), None for a run-artifact source."""
    if getattr(model_version, "model_id", None):
        return model_version.model_id
    source = model_version.source or ""
    if source.startswith("models:/m-"):
        return source.removeprefix("models:/").split("/")[0]
    return None


def version_artifact_refs(model_version, client) -> list[tuple[str, str, str]]:
    """(kind, id, artifact uri) of the version's logged model and train run."""
    from mlflow.exceptions import MlflowException

    refs = []
    model_id = logged_model_id(model_version)
    if model_id:
        try:
            refs.append(("logged model", model_id, client.get_logged_model(model_id).artifact_location))
        except MlflowException:
            logger.warning("gc: version %s: logged model %s is gone", model_version.version, model_id)
    run_id = model_version.tags.get(TRAIN_RUN_TAG)
    if run_id:
        try:
            refs.append(("train run", run_id, client.get_run(run_id).info.artifact_uri))
        except MlflowException:
            logger.warning("gc: version %s: train run %s is gone", model_version.version, run_id)
    return refs


def artifact_files(uri: str, tracking_uri: str) -> list[tuple[str, int]]:
    """(path, size) of every file under an artifact URI (empty when there is nothing)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    repository = get_artifact_repository(uri, tracking_uri=tracking_uri)
    files: list[tuple[str, int]] = []
    folders: list[str | None] = [None]  # None: the root
    while folders:
        folder = folders.pop()
        for info in repository.list_artifacts(folder):
            if info.is_dir:
                folders.append(info.path)
            else:
                files.append((info.path, int(info.file_size or 0)))
    return files


def workspace_run_ids(root: Path) -> set[str]:
    """The MLflow run the workspace's model came from (its train record), if any."""
    path = root / TRAIN_RECORD
    if not path.is_file():
        return set()
    run_id = TrainRecord.read(path).mlflow_run_id
    return {run_id} if run_id else set()


@contextlib.contextmanager
def exclusive(root: Path, repo) -> Iterator[None]:
    """No retrain of this project and no DVC command in it while gc decides and deletes."""
    from dvc.lock import LockError
    from dvc.repo import lock_repo

    lock_path = root / RETRAIN_LOCK
    busy = Art2MusError(f"gc: a retrain is running in {root} (it holds {lock_path}); run gc when it has finished")
    with file_lock(lock_path, 0, busy):
        try:
            with lock_repo(repo):
                yield
        except LockError:
            raise Art2MusError(f"gc: a DVC command is running in {root} (DVC's repo lock is held); "
                               "run gc when it has finished") from None


def plan_gc(root: Path, config: GcParams, client, repo) -> tuple[GcPlan, set[str]]:
    """What gc keeps and removes; also the kept object ids (the keep-set DVC's collector gets)."""
    versions = registered_versions(client)
    kept = kept_versions(client, config)
    odb = repo.cache.local
    stores = [odb, *filter(None, [default_remote_odb(repo)])]
    workspace = cached_outputs(repo)
    keep = expand(workspace, stores, set(workspace), "the workspace")
    for model_version in versions:
        if str(model_version.version) in kept:
            keep |= expand(recorded_hashes(model_version), stores, set(workspace),
                           f"{MODEL_NAME} version {model_version.version}")
    plan = GcPlan(kept=kept, cache_objects=unreferenced_objects(odb, keep), kept_objects=len(keep))
    protected = workspace_run_ids(root)
    refs = {str(found.version): version_artifact_refs(found, client) for found in versions}
    for version in kept:
        protected |= {ref for _, ref, _ in refs.get(version, [])}
    for version, version_refs in refs.items():
        if version in kept:
            continue
        for kind, ref, uri in version_refs:
            if ref in protected:
                continue
            files = artifact_files(uri, client.tracking_uri)
            if files:
                plan.artifacts.append(ArtifactRoot(version, kind, ref, uri, len(files), sum(size for _, size in files)))
    return plan, keep


def delete_garbage(plan: GcPlan, keep: set[str], client, repo) -> None:
    """Delete what the plan lists: DVC's collector with the keep-set, MLflow's artifact repository."""
    from dvc_data.hashfile.gc import gc as collect
    from dvc_data.hashfile.hash_info import HashInfo
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    if plan.cache_objects:
        removed = collect(repo.cache.local, [HashInfo("md5", oid) for oid in keep])
        logger.info("gc: removed %d DVC cache objects", removed)
    done: set[str] = set()
    for item in plan.artifacts:
        get_artifact_repository(item.uri, tracking_uri=client.tracking_uri).delete_artifacts()
        logger.info("gc: removed the artifacts of version %s's %s %s (%s)", item.version, item.kind, item.ref, item.uri)
        if item.version not in done:
            client.set_model_version_tag(MODEL_NAME, item.version, DELETED_TAG, utc_now())
            done.add(item.version)
    plan.deleted = True


def collect_garbage(root: Path, config: GcParams, client, delete: bool = False) -> GcPlan:
    """Plan gc under the project's locks and, with `delete`, carry it out before letting go of them."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    require_registry(client)  # before the former name is migrated, none of its versions would count as kept
    try:
        repo = Repo(str(root))
    except NotDvcRepoError:
        raise Art2MusError(f"gc: {root} is not a DVC repository (no .dvc/)") from None
    try:
        with exclusive(root, repo):
            plan, keep = plan_gc(root, config, client, repo)
            if delete and not plan.empty:
                delete_garbage(plan, keep, client, repo)
    finally:
        repo.close()
    return plan
