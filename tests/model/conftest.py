"""The tiny project whose `train` upstream has run, shared by the training-stage tests of one xdist group."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers import BIN, OUTPUT_TAIL, copy_project, project_env
from tests.tiny_model import TINY_PROJECT

UPSTREAM_TIMEOUT = 600  # seconds for `dvc repro latents` on the tiny project (about a minute on 2 cores)


@pytest.fixture(scope="session")
def tiny_upstream(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny project (TINY_PROJECT) on which every stage `train` depends on has run (`dvc repro latents`);
    tests copy it and may change the copy's `train` params."""
    root = copy_project(tmp_path_factory.mktemp("tiny_upstream") / "project", TINY_PROJECT)
    result = subprocess.run([str(BIN / "dvc"), "repro", "latents"], cwd=root, env=project_env(root),
                            capture_output=True, text=True, timeout=UPSTREAM_TIMEOUT)
    assert result.returncode == 0, result.stdout[-OUTPUT_TAIL:] + result.stderr[-OUTPUT_TAIL:]
    return root
