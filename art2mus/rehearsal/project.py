"""A copy of the project as a fresh git repo (for rehearsals and end-to-end tests), with a params overlay."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import yaml

from art2mus.env import project_environment

AUTHOR = {"GIT_AUTHOR_NAME": "art2mus", "GIT_AUTHOR_EMAIL": "art2mus@art2mus.invalid",
          "GIT_COMMITTER_NAME": "art2mus", "GIT_COMMITTER_EMAIL": "art2mus@art2mus.invalid"}


def project_files(root: Path) -> list[str]:
    """Tracked and not-ignored files of the working tree (what a clone plus local edits holds)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                            cwd=root, capture_output=True, text=True, check=True).stdout.split("\0")
    return [name for name in listed if name and (root / name).is_file()]


def merge(base: dict, override: dict) -> dict:
    """`base` with `override` laid over it, mapping by mapping."""
    merged = dict(base)
    for key, value in override.items():
        merged[key] = merge(base.get(key) or {}, value) if isinstance(value, dict) else value
    return merged


def copy_project(source: Path, destination: Path, params_override: dict) -> Path:
    """Copy the project at `source` into `destination` as a fresh git repo, params overlaid, committed."""
    for name in project_files(source):
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / name, target)
    params = yaml.safe_load((destination / "params.yaml").read_text())
    (destination / "params.yaml").write_text(yaml.safe_dump(merge(params, params_override), sort_keys=False))
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=destination, check=True)
    subprocess.run(["git", "add", "-A"], cwd=destination, check=True)
    subprocess.run(["git", "commit", "-q", "-m", "project copy"], cwd=destination, check=True,
                   env={**os.environ, **AUTHOR})
    return destination


def project_env(root: Path) -> dict[str, str]:
    """The environment `make` gives a project (art2mus.env.project_environment), with the rehearsal's author."""
    return {**project_environment(root), **AUTHOR}
