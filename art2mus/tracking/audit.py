"""The audit of a registered model: what made it, whether its inputs can still be had, what used a file.

- Forward: a version's tags (set at registration) name its train run, commit, params, the DVC md5 of
  every input the train stage read, the quality gates' verdicts, the encoder, backbone and library
  versions. `trace` follows them and asks DVC (its cache and default remote, through DVC's own object
  databases, so S3 works as a local folder does) whether each input can still be had.
- Reverse: `versions_using` finds every version whose recorded inputs hold a file's md5, expanding
  folder inputs (`.dir` manifests) from the cache or the remote.
- Restore: `restore_inputs` puts recorded inputs back into a workspace from the cache or the remote.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from art2mus.errors import Art2MusError
from art2mus.tracking.lineage import COMPLETE_TAG
from art2mus.tracking.registry import MODEL_NAME, aliases
from art2mus.workspace import TRAIN_RUN_TAG, VALIDATION_TAG, VersionTags

MD5 = re.compile(r"^[0-9a-f]{32}(\.dir)?$")
MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))$")
PRESENT, MISSING, NO_REMOTE = "present", "missing", "no remote"


# --- DVC's cache and remote -------------------------------------------------------------------------


@dataclass
class DataStores:
    """The project's DVC cache and default remote, as DVC's object databases."""

    repo: Any
    cache: Any
    remote: Any | None  # None: no default remote
    remote_name: str = ""
    remote_error: str = ""
    trees: dict[str, Any] = field(default_factory=dict)

    def has(self, odb, oids: list[str]) -> set[str]:
        return set(odb.oids_exist(oids)) if oids else set()

    def tree(self, md5: str):
        """The `.dir` manifest of `md5`, from the cache or else the remote; None when neither has it."""
        if md5 not in self.trees:
            self.trees[md5] = None
            for odb in (self.cache, self.remote):
                if odb is not None and self.has(odb, [md5]):
                    from dvc_data.hashfile.hash_info import HashInfo
                    from dvc_data.hashfile.tree import Tree

                    self.trees[md5] = Tree.load(odb, HashInfo("md5", md5))
                    break
        return self.trees[md5]


@contextmanager
def open_stores(root: Path) -> Iterator[DataStores]:
    """The DVC cache and default remote of the project at `root`."""
    from dvc.config import NoRemoteError
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        repo = Repo(str(root))
    except DvcException as error:
        raise Art2MusError(f"{root}: not a DVC project ({error})") from None
    with repo:
        remote, name, problem = None, repo.config["core"].get("remote", ""), ""
        try:
            remote = repo.cloud.get_remote_odb(None, "lineage")
        except NoRemoteError:
            pass
        except DvcException as error:
            problem = str(error)
        yield DataStores(repo=repo, cache=repo.cache.local, remote=remote, remote_name=name, remote_error=problem)


def resolve_tree(stores: DataStores, path: str, md5: str, inputs: Mapping[str, str]):
    """The manifest of folder input `path`: its own `.dir` object, or the part of a recorded folder that
    holds it (a stage's dependency inside another stage's output has no object of its own), checked to
    digest to `md5`. Returns (tree, stored-as path) or (None, None)."""
    tree = stores.tree(md5)
    if tree is not None:
        return tree, path
    for outer, outer_md5 in inputs.items():
        if outer != path and path.startswith(f"{outer.rstrip('/')}/") and outer_md5.endswith(".dir"):
            container = stores.tree(outer_md5)
            if container is None:
                continue
            part = container.get_obj(stores.cache, tuple(path[len(outer) + 1:].split("/")))
            if part is not None and getattr(part, "hash_info", None) is not None and part.hash_info.value == md5:
                return part, outer
    return None, None


def presence(stores: DataStores, odb, oids: list[str]) -> str:
    if odb is None:
        return NO_REMOTE if not stores.remote_error else f"unknown ({stores.remote_error})"
    try:
        found = stores.has(odb, oids)
    except Exception as error:  # noqa: BLE001 - an unreachable remote is a status to show, not a crash
        return f"unknown ({type(error).__name__}: {error})"
    if len(found) == len(oids):
        return PRESENT
    return MISSING if not found else f"partial ({len(found)} of {len(oids)} objects)"


def input_status(stores: DataStores, path: str, md5: str, inputs: Mapping[str, str]) -> dict[str, Any]:
    """Whether the cache and the remote hold input `path` (a folder: its manifest and every file)."""
    status: dict[str, Any] = {"path": path, "md5": md5}
    if md5.endswith(".dir"):
        tree, stored_as = resolve_tree(stores, path, md5, inputs)
        if tree is None:
            return {**status, "cache": MISSING, "remote": MISSING if stores.remote is not None else
                    presence(stores, None, []), "files": None}
        files = sorted({entry.value for _, _, entry in tree if entry is not None and entry.value})
        manifest = md5 if stored_as == path else inputs[stored_as]
        status.update(files=len(files), stored_as=stored_as)
        oids = [manifest, *files]
    else:
        oids = [md5]
    status["cache"] = presence(stores, stores.cache, oids)
    status["remote"] = presence(stores, stores.remote, oids)
    return status


def restore_inputs(root: Path, inputs: Mapping[str, str]) -> None:
    """Put each recorded input (path -> DVC md5) into the workspace at `root`, from the DVC cache or,
    for what the cache lacks, the default remote (DVC's own transfer and checkout)."""
    from dvc_data.hashfile.checkout import checkout
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.tree import Tree
    from dvc_objects.fs.local import LocalFileSystem

    with open_stores(root) as stores:
        fetch(stores, [md5 for md5 in inputs.values()])  # files, and folders' manifests
        fetch(stores, sorted({entry.value for md5 in inputs.values() if md5.endswith(".dir")
                              for _, _, entry in Tree.load(stores.cache, HashInfo("md5", md5)) if entry}))
        for path, md5 in inputs.items():
            obj = Tree.load(stores.cache, HashInfo("md5", md5)) if md5.endswith(".dir") else stores.cache.get(md5)
            checkout(str((root / path).resolve()), LocalFileSystem(), obj, stores.cache, force=True, quiet=True)


def fetch(stores: DataStores, oids: list[str]) -> None:
    """Bring the objects the cache lacks from the default remote (a folder's manifest, not its files)."""
    from dvc_data.hashfile.hash_info import HashInfo

    lacking = sorted(set(oids) - stores.has(stores.cache, list(oids)))
    if not lacking:
        return
    if stores.remote is None:
        raise Art2MusError(f"{stores.repo.root_dir}: the DVC cache lacks {len(lacking)} recorded object(s) and there "
                           f"is no default remote to fetch them from{': ' + stores.remote_error if stores.remote_error else ''}")
    stores.repo.cloud.pull([HashInfo("md5", oid) for oid in lacking])
    failed = sorted(set(lacking) - stores.has(stores.cache, lacking))  # DVC logs objects the remote lacks, not raises
    if failed:
        raise Art2MusError(f"{stores.repo.root_dir}: could not fetch {len(failed)} recorded object(s) from the DVC "
                           f"remote {stores.remote_name!r}: {', '.join(failed)}")


def check_inputs(root: Path, inputs: Mapping[str, str]) -> list[dict[str, Any]]:
    with open_stores(root) as stores:
        return [input_status(stores, path, md5, inputs) for path, md5 in inputs.items()]


# --- forward: a model URI to everything that made it ------------------------------------------------


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """(name, alias, version) of `models:/name@alias` or `models:/name/3`."""
    match = MODEL_URI.match(uri.strip())
    if match is None:
        raise Art2MusError(f"{uri!r} is not a model URI (models:/{MODEL_NAME}@champion or "
                           f"models:/{MODEL_NAME}/3)")
    return match["name"], match["alias"], match["version"]


def resolve_version(client, uri: str):
    """The model version a URI names, or a clear error naming what exists."""
    from mlflow.exceptions import MlflowException

    name, alias, number = parse_model_uri(uri)
    try:
        if alias is not None:
            return alias, client.get_model_version_by_alias(name, alias)
        return None, client.get_model_version(name, number)
    except MlflowException as error:
        try:
            known = client.get_registered_model(name)
        except MlflowException:
            raise Art2MusError(f"no registered model {name!r} in {client.tracking_uri}") from None
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
        raise Art2MusError(f"{uri} does not exist (aliases: "
                           f"{', '.join(f'{a}->{v}' for a, v in known.aliases.items()) or 'none'}; versions: "
                           f"{', '.join(map(str, versions)) or 'none'}): {error.message}") from None


def recorded_inputs(tags: Mapping[str, str]) -> tuple[dict[str, str], str]:
    """A version's recorded training inputs and which tag they came from (older versions lack the closure)."""
    return VersionTags.from_tags(tags).recorded_inputs()


def run_summary(client, run_id: str) -> dict[str, Any]:
    from mlflow.exceptions import MlflowException

    if not run_id:
        return {"id": "", "found": False}
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return {"id": run_id, "found": False}
    return {"id": run_id, "found": True, "status": run.info.status, "experiment_id": run.info.experiment_id,
            "artifact_uri": run.info.artifact_uri, "git.commit": run.data.tags.get("git.commit", ""),
            "lineage_complete": run.data.tags.get(COMPLETE_TAG) == "true",
            "datasets": sorted({(d.dataset.name, d.dataset.digest) for d in run.inputs.dataset_inputs})}


def trace(client, uri: str, root: Path) -> dict[str, Any]:
    """The chain behind a model URI: alias, version, runs, commit, params, inputs (with their DVC
    status), gate verdicts, encoder, backbone, libraries."""
    alias, model_version = resolve_version(client, uri)
    tags = VersionTags.from_tags(model_version.tags)
    inputs, inputs_from = tags.recorded_inputs()
    train_run = run_summary(client, tags.train_run_id)
    statuses = check_inputs(root, inputs) if inputs else []
    return {
        "uri": uri, "model": model_version.name, "alias": alias, "version": str(model_version.version),
        "identity": tags.identity, "validation_status": tags.validation_status,
        "weights_sha256": tags.weights_sha256,
        "register_run": model_version.run_id, "train_run": {**train_run, "datasets": [
            {"name": name, "digest": digest} for name, digest in train_run.get("datasets", [])]},
        "git": {"commit": tags.git_commit, "dirty": tags.git_dirty, "code_version": tags.code_version},
        "params": tags.params,
        "image_encoder": {"spec": tags.image_encoder, "id": tags.image_encoder_id},
        "backbone": tags.backbone, "prior": tags.prior,
        "inputs_tag": inputs_from, "inputs": statuses, "training_data": tags.training_data_hashes,
        "gates": tags.gates, "libraries": tags.libraries,
    }


def unavailable(chain: Mapping[str, Any]) -> list[str]:
    """Inputs neither the cache nor the remote holds in full."""
    return [item["path"] for item in chain["inputs"] if PRESENT not in (item["cache"], item["remote"])]


# --- reverse: a data file to every version it went into ---------------------------------------------


def dvc_md5(path: Path, root: Path) -> str:
    """The md5 DVC records for a file, or for a folder its `.dir` hash."""
    from dvc_data.hashfile.hash import file_md5
    from dvc_objects.fs.local import LocalFileSystem

    path = path.resolve()
    if path.is_file():
        return file_md5(str(path), LocalFileSystem())
    from dvc_data.hashfile.build import build

    with open_stores(root) as stores:
        _, _, tree = build(stores.cache, str(path), LocalFileSystem(), "md5", dry_run=True)
    if tree.hash_info.value is None:  # dvc_data types it optional; a built tree has its hash
        raise Art2MusError(f"{path}: DVC computed no hash for this folder")
    return tree.hash_info.value


def target_md5(target: str, root: Path) -> tuple[str, str | None]:
    """(md5, the path it was computed from) of a path, or of a hash given as is."""
    path = Path(target)
    if path.exists():
        return dvc_md5(path, root), str(path)
    if MD5.match(target.strip().lower()):
        return target.strip().lower(), None
    raise Art2MusError(f"{target}: no such file or folder, and not a DVC md5 (32 hex digits, "
                       "'.dir' for a folder)")


def matches_in(stores: DataStores, md5: str, inputs: Mapping[str, str]) -> tuple[list[dict[str, str]], list[str]]:
    """Where `md5` occurs among a version's inputs: ([{input, md5, contains}], inputs whose manifest is gone)."""
    found, unreadable = [], []
    for path, input_md5 in inputs.items():
        if input_md5 == md5:
            found.append({"input": path, "input_md5": input_md5, "contains": ""})
        elif input_md5.endswith(".dir"):
            tree, _ = resolve_tree(stores, path, input_md5, inputs)
            if tree is None:
                unreadable.append(path)
                continue
            for key, _, entry in tree:
                if entry is not None and entry.value == md5:
                    found.append({"input": path, "input_md5": input_md5, "contains": "/".join(key)})
    return most_specific(found), unreadable


def most_specific(found: list[dict[str, str]]) -> list[dict[str, str]]:
    """Drop a match through a folder when a recorded input inside that folder holds the same file."""
    def location(match: dict[str, str]) -> str:
        return f"{match['input']}/{match['contains']}" if match["contains"] else match["input"]

    paths = {location(match): match for match in found}
    inner = {match["input"] for match in found}
    return [match for key, match in sorted(paths.items())
            if not any(other != match["input"] and other.startswith(f"{match['input']}/") for other in inner)]


def all_versions(client, name: str = MODEL_NAME) -> list:
    from mlflow.exceptions import MlflowException

    try:
        versions = list(client.search_model_versions(f"name = '{name}'"))
    except MlflowException:
        return []
    return sorted(versions, key=lambda model_version: int(model_version.version))


def versions_using(client, target: str, root: Path) -> dict[str, Any]:
    """Every version of the model whose recorded training inputs include `target` (a path or a DVC md5)."""
    md5, path = target_md5(target, root)
    versions = all_versions(client)
    aliases_by_version: dict[str, list[str]] = {}
    for alias, number in aliases(client).items():  # version searches do not return aliases
        aliases_by_version.setdefault(number, []).append(alias)
    hits, unreadable = [], {}
    with open_stores(root) as stores:
        for model_version in versions:
            inputs, _ = recorded_inputs(model_version.tags)
            found, missing = matches_in(stores, md5, inputs)
            if missing:
                unreadable[str(model_version.version)] = missing
            if found:
                hits.append({"version": str(model_version.version),
                             "aliases": sorted(aliases_by_version.get(str(model_version.version), [])),
                             "validation_status": model_version.tags.get(VALIDATION_TAG, ""),
                             "train_run_id": model_version.tags.get(TRAIN_RUN_TAG, ""), "through": found})
    return {"target": target, "path": path, "md5": md5, "versions_searched": len(versions), "versions": hits,
            "unreadable": unreadable}
