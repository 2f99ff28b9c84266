"""What dvc.lock records: every stage's deps and outs with their md5, and what a stage read upstream of it.

The bottom of the tracking layers: lineage, the registry and the audit read dvc.lock through here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from art2mus.data.schema import REPORTS_DIR
from art2mus.errors import Art2MusError

CODE_DIRS = ("art2mus/", "stages/")


def read_lock(lock_file: Path) -> dict[str, Any]:
    """The stages of dvc.lock (empty when there is none)."""
    if not lock_file.is_file():
        return {}
    try:
        lock = yaml.safe_load(lock_file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise Art2MusError(f"{lock_file}: not valid YAML: {error}") from None
    return lock.get("stages") or {}


def is_code(path: str) -> bool:
    return path.endswith(".py") or path.startswith(CODE_DIRS)


def data_hashes(lock_file: Path) -> dict[str, str]:
    """md5 of every data dependency and output in dvc.lock (code and models/ left out)."""
    hashes: dict[str, str] = {}
    for stage in read_lock(lock_file).values():
        for entry in [*(stage.get("deps") or []), *(stage.get("outs") or [])]:  # outs last: authoritative
            path, md5 = entry.get("path", ""), entry.get("md5")
            if md5 and not is_code(path) and not path.startswith("models/"):
                hashes[path] = md5
    return dict(sorted(hashes.items()))


def training_data_hashes(lock_file: Path, stage: str = "train") -> dict[str, str]:
    """md5 of every non-code input `stage` recorded in dvc.lock: exactly the data the model was trained on."""
    deps = read_lock(lock_file).get(stage, {}).get("deps") or []
    return dict(sorted((entry["path"], entry["md5"]) for entry in deps
                       if entry.get("md5") and not is_code(entry.get("path", ""))))


def stage_outputs(stages: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """out path -> (stage, md5) of every output dvc.lock records."""
    outputs = {}
    for name, stage in stages.items():
        for out in stage.get("outs") or []:
            if out.get("md5"):
                outputs[out["path"]] = (name, out["md5"])
    return outputs


def producer(path: str, outputs: Mapping[str, tuple[str, str]]) -> tuple[str, str, str] | None:
    """(out path, stage, md5) of the output that is `path` or the folder holding it."""
    for out, (stage, md5) in outputs.items():
        if path == out or path.startswith(f"{out.rstrip('/')}/"):
            return out, stage, md5
    return None


def input_closure(stages: Mapping[str, Any], start: Iterable[tuple[str, str | None]]) -> dict[str, str]:
    """md5 of every data path in `start` and of everything the stages that produced them read, recursively.

    `start` holds (path, md5) pairs; a None md5 is taken from the output that produced the path. A path
    inside another stage's output folder also brings that folder (the object DVC stores). Code and
    the quality gates' reports (lineage of their own) are followed but not listed.
    """
    outputs = stage_outputs(stages)
    hashes: dict[str, str] = {}
    visited: set[str] = set()
    queue = list(start)
    while queue:
        path, md5 = queue.pop()
        if is_code(path):
            continue
        made_by = producer(path, outputs)
        if made_by is not None:
            out, stage, out_md5 = made_by
            md5 = md5 or (out_md5 if out == path else None)
            if not out.startswith(REPORTS_DIR):
                hashes[out] = out_md5
            if stage not in visited:
                visited.add(stage)
                queue.extend((dep["path"], dep.get("md5")) for dep in stages[stage].get("deps") or [])
        if md5 and not path.startswith(REPORTS_DIR):
            hashes[path] = md5
    return dict(sorted(hashes.items()))


def training_inputs(lock_file: Path, stage: str = "train") -> dict[str, str]:
    """Every data input of `stage` as dvc.lock records it, with everything upstream of it."""
    stages = read_lock(lock_file)
    deps = stages.get(stage, {}).get("deps") or []
    return input_closure(stages, [(dep["path"], dep.get("md5")) for dep in deps])


def upstream_inputs(lock_file: Path, paths: Iterable[str]) -> dict[str, str]:
    """What the stage about to read `paths` will have read: their producing outputs' md5 and upstream.

    Under `dvc repro` the producing stages' dvc.lock entries are final before the consumer runs.
    """
    return input_closure(read_lock(lock_file), [(str(path), None) for path in paths])
