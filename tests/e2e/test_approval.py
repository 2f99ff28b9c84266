"""Manual approval (`promotion.require_approval`): the retrain flow registers and judges the challenger, but
only `art2mus promote VERSION` makes it champion. Runs `art2mus retrain` as `make run` does (Prefect
ephemeral, SQLite MLflow in the project) on a copy of the shared pipeline fixture: nothing is trained again.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from art2mus.tracking.registry import MODEL_NAME
from tests.helpers import BIN, merge, project_env

pytestmark = pytest.mark.slow


def art2mus(root: Path, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "art2mus"), *arguments], cwd=root, env=project_env(root), capture_output=True,
                          text=True, timeout=900, check=False)


def version_one(root: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Version 1's tags and the registered model's aliases."""
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    model = client.get_registered_model(MODEL_NAME)
    return client.get_model_version(MODEL_NAME, "1").tags, {alias: str(v) for alias, v in model.aliases.items()}


@pytest.fixture(scope="module")
def approval_repo(pipeline_repo: Path, module_tmp: Path) -> Path:
    root = module_tmp / "project"
    shutil.copytree(pipeline_repo, root, symlinks=True)
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(merge(yaml.safe_load(params.read_text()),
                                           {"promotion": {"require_approval": True}}), sort_keys=False))
    return root


def test_a_winning_challenger_waits_for_approval_then_promote_makes_it_champion(approval_repo: Path) -> None:
    first = art2mus(approval_repo, "retrain")
    assert first.returncode == 0, (first.stdout + first.stderr)[-6000:]
    output = first.stdout + first.stderr
    assert "version 1 passed the floors (no champion yet) and awaits approval: art2mus promote 1" in output
    tags, aliases = version_one(approval_repo)
    assert tags["validation_status"] == "awaiting_approval" and aliases == {"challenger": "1"}  # no champion

    again = art2mus(approval_repo, "retrain")  # nothing changed: the verdict stands, still no champion
    assert again.returncode == 0, (again.stdout + again.stderr)[-6000:]
    assert "awaits approval: art2mus promote 1" in again.stdout + again.stderr
    assert version_one(approval_repo)[1] == {"challenger": "1"}

    promoted = art2mus(approval_repo, "promote", "1", "--by", "alice", "--reason", "listened to it")
    assert promoted.returncode == 0, promoted.stderr
    assert f"{MODEL_NAME}@champion: version 1 (was none)" in promoted.stdout
    tags, aliases = version_one(approval_repo)
    assert aliases == {"champion": "1"}
    assert tags["validation_status"] == "passed" and tags["approved_by"] == "alice" and tags["promoted_by"] == "alice"
    history = art2mus(approval_repo, "history", "--json")
    [event] = json.loads(history.stdout)
    assert (event["kind"], event["version"], event["previous"], event["by"], event["reason"]) == \
        ("promote", "1", None, "alice", "listened to it")
