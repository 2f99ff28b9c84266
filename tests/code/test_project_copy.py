"""A copy of the project (the rehearsal's, the end-to-end tests') takes what a clone holds, never tools' caches."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from art2mus.rehearsal.project import project_files

ROOT = Path(__file__).resolve().parents[2]


def test_tool_caches_being_written_never_travel_with_a_copy(tmp_path: Path) -> None:
    # `make test` runs mypy beside the suite: until mypy writes its cache's own .gitignore, each project copy took
    # the ~80 MB being written (and a copy of a half-written file).
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    shutil.copy2(ROOT / ".gitignore", tmp_path / ".gitignore")
    for cache in (".mypy_cache/3.11/art2mus/cli.data.json", ".ruff_cache/0.15.0/123", ".pytest_cache/v/cache/nodeids"):
        (tmp_path / cache).parent.mkdir(parents=True)
        (tmp_path / cache).write_text("{}")
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    assert sorted(project_files(tmp_path)) == [".gitignore", "params.yaml"]
