"""Lineage end to end on a copy of the shared pipeline fixture: retrain its aligner short from a clean
commit and register it; trace the champion back to its run, commit, params, data (in the DVC cache and
the pushed remote) and gates; find the version from a raw image it was trained on; and the
reproducibility audit: a fresh clone at the recorded commit, the recorded data pulled from the remote,
the `train` stage re-run, the same weights."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from art2mus.tracking.audit import restore_inputs
from art2mus.tracking.lineage import (
    COMPLETE_TAG,
    INPUTS_TAG,
    LINEAGE_ARTIFACTS,
    collect_lineage,
)
from art2mus.tracking.registry import (
    CHAMPION,
    MODEL_NAME,
    register_model,
)
from tests.helpers import BIN, QUICK_EVALUATE, project_env, run, set_params

pytestmark = pytest.mark.slow
TRAIN_TIMEOUT = 1200  # seconds: each of the two short retrainings of this module
# checkpoints on the way, as in the default recipe, so the audit also replays their writing
SHORT_TRAINING = {"train": {"steps": 40, "warmup_steps": 2, "checkpoint_every": 20}, "evaluate": QUICK_EVALUATE}


def art2mus(root: Path, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "art2mus"), *arguments], cwd=root, env=project_env(root), capture_output=True,
                          text=True, timeout=600, check=False)


def repoint_artifacts(root: Path) -> None:
    """The copied tracking store's artifact locations name the project it was copied from: point them at
    the copy, so registering here writes nothing into the shared fixture."""
    with sqlite3.connect(root / "mlflow.db") as db:
        (location,) = db.execute("SELECT artifact_location FROM experiments WHERE name = 'art2mus'").fetchone()
        original = location.removesuffix("/mlartifacts")
        for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri")):
            db.execute(f"UPDATE {table} SET {column} = replace({column}, ?, ?)", (original, root.as_uri()))


def retrain_short(root: Path) -> None:
    """Commit a short aligner recipe and re-run `train` and `evaluate` (DVC skips the rest): the audit below
    repeats the same code path from scratch, at 40 steps rather than the default's hundreds."""
    set_params(root, SHORT_TRAINING)
    run(["git", "commit", "-q", "-m", "a short aligner recipe to audit", "params.yaml"], root)
    run([str(BIN / "dvc"), "repro", "-q"], root, timeout=TRAIN_TIMEOUT)


@pytest.fixture(scope="module")
def lineage_repo(pipeline_repo: Path, module_tmp: Path) -> tuple[Path, str]:
    """A copy of the fixture, its aligner retrained short from a clean commit, its data pushed to its local
    remote and its model registered as champion."""
    root = module_tmp / "project"
    shutil.copytree(pipeline_repo, root, symlinks=True)
    repoint_artifacts(root)
    retrain_short(root)
    run([str(BIN / "dvc"), "push", "-q"], root)
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    record = json.loads((root / "models" / "train_record.json").read_text())
    version = register_model(root / "models" / "art2mus", record, collect_lineage(root), client=client,
                             root=root).version
    client.set_registered_model_alias(MODEL_NAME, CHAMPION, version)
    return root, version


def version_tags(root: Path, version: str) -> dict[str, str]:
    return MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db").get_model_version(MODEL_NAME, version).tags


def test_forward_lineage_of_the_champion(lineage_repo: tuple[Path, str]) -> None:
    root, version = lineage_repo
    forward = art2mus(root, "lineage", f"models:/{MODEL_NAME}@{CHAMPION}")
    print("\n" + forward.stdout)  # the printout quoted in the closing note (pytest -s)
    assert forward.returncode == 0, forward.stdout + forward.stderr
    record = json.loads((root / "models" / "train_record.json").read_text())
    commit = run(["git", "rev-parse", "HEAD"], root).stdout.strip()
    for expected in (f"alias      {CHAMPION} -> version {version}", f"train {record['mlflow_run_id']}",
                     f"commit     {commit} (clean)", "validate_raw: passed", "validate_splits: passed"):
        assert expected in forward.stdout

    chain = json.loads(art2mus(root, "lineage", f"models:/{MODEL_NAME}/{version}", "--json").stdout)
    inputs = {item["path"]: item for item in chain["inputs"]}
    for path in ("data/sample/artgraph", "data/sample/fma", "data/interim/pairs.parquet",
                 "data/processed/splits.parquet", "data/features/image_embeddings.safetensors",
                 "data/latents/latents_index.parquet", "data/latents/cache", "models/prior"):
        assert inputs[path]["cache"] == inputs[path]["remote"] == "present", inputs[path]
    assert not any(path.startswith(("reports/", "models/art2mus")) for path in inputs)  # nothing downstream
    assert chain["weights_sha256"] == record["weights_sha256"] and chain["git"]["commit"] == commit
    assert chain["train_run"]["lineage_complete"] is True
    assert {item["name"] for item in chain["train_run"]["datasets"]} == set(inputs)
    assert chain["params"]["train"]["steps"] > 0 and "torch" in chain["libraries"]

    train_run = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db").get_run(record["mlflow_run_id"])
    assert train_run.data.tags[COMPLETE_TAG] == "true"


def test_reverse_lineage_answers_a_takedown_request(lineage_repo: tuple[Path, str], tmp_path: Path) -> None:
    root, version = lineage_repo
    image = min((root / "data" / "sample" / "artgraph").rglob("*.jpg"))
    found = art2mus(root, "lineage", "--data", str(image.relative_to(root)))
    print("\n" + found.stdout)
    assert found.returncode == 0, found.stdout + found.stderr
    assert f"version {version} @{CHAMPION}" in found.stdout
    inside = image.relative_to(root / "data" / "sample" / "artgraph").as_posix()
    assert "through data/sample/artgraph (" in found.stdout and f"-> contains {inside}" in found.stdout

    by_hash = json.loads(art2mus(root, "lineage", "--data", hashlib.md5(image.read_bytes()).hexdigest(),
                                 "--json").stdout)
    assert [hit["version"] for hit in by_hash["versions"]] == [version]

    stranger = tmp_path / "not-ours.jpg"
    stranger.write_bytes(b"\xff\xd8 a painting nobody trained on")
    none = art2mus(root, "lineage", "--data", str(stranger))
    assert none.returncode == 1 and "used by no version" in none.stdout


def test_reproducibility_audit_retrains_bit_identical_weights(lineage_repo: tuple[Path, str],
                                                                tmp_path: Path) -> None:
    """Clone at the recorded commit, pull the recorded training data, re-run `train`: the same weights."""
    root, version = lineage_repo
    tags = version_tags(root, version)
    assert tags["git.dirty"] == "false", "the audit needs a version trained from a clean commit"
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(root), str(clone)], tmp_path)
    run(["git", "checkout", "-q", tags["git.commit"]], clone)
    run([str(BIN / "dvc"), "remote", "modify", "--local", "local", "url", str(root / ".dvcstore")], clone)
    recorded = json.loads(tags["training_data_hashes"])
    assert {"models/prior", "data/processed/splits.parquet"} <= set(recorded)
    restore_inputs(clone, recorded)
    # The dvc.lock the registration recorded on the train run: the clone's train run records the same lineage.
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    lock = client.download_artifacts(tags["train_run_id"], f"{LINEAGE_ARTIFACTS}/dvc.lock", str(tmp_path))
    shutil.copy2(lock, clone / "dvc.lock")

    retrain = subprocess.run([sys.executable, "-m", "stages.train"], cwd=clone, env=project_env(clone),
                             capture_output=True, text=True, timeout=TRAIN_TIMEOUT, check=False)
    assert retrain.returncode == 0, (retrain.stdout + retrain.stderr)[-6000:]
    audited = json.loads((clone / "models" / "train_record.json").read_text())
    assert audited["resumed_from"] == 0  # trained from scratch, not from a copied checkpoint
    assert audited["weights_sha256"] == tags["weights_sha256"]
    audit_run = MlflowClient(tracking_uri=f"sqlite:///{clone}/mlflow.db").get_run(audited["mlflow_run_id"])
    assert json.loads(audit_run.data.tags[INPUTS_TAG]) == json.loads(tags[INPUTS_TAG])
    assert audit_run.data.tags["git.commit"] == tags["git.commit"]
