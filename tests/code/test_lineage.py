"""Lineage both ways on a miniature DVC project (shell stages shaped like the real pipeline, a real
cache and local remote) and a real MLflow SQLite store: what training read, where it is stored,
the train run completed at registration, `art2mus lineage` forward and reverse."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from art2mus.cli.main import app
from art2mus.errors import Art2MusError
from art2mus.tracking.audit import (
    check_inputs,
    parse_model_uri,
    restore_inputs,
    unavailable,
    versions_using,
)
from art2mus.tracking.dvclock import input_closure, training_inputs, upstream_inputs
from art2mus.tracking.lineage import (
    COMPLETE_TAG,
    LINEAGE_ARTIFACTS,
    collect_lineage,
    record_training_lineage,
)
from art2mus.tracking.registry import (
    CHAMPION,
    MODEL_NAME,
    register_model,
)
from art2mus.tracking.runs import StageRun
from art2mus.workspace import INPUTS_TAG
from tests.helpers import BIN, ROOT, project_env
from tests.tiny_model import build_tiny_model

# sample -> ingest -> validate_raw (a gate) -> split -> train, prior beside it, evaluate downstream.
PIPELINE = """
stages:
  sample:
    cmd: >-
      mkdir -p data/sample/artgraph/images data/sample/fma &&
      printf 'mona' > data/sample/artgraph/images/a.jpg && printf 'pieta' > data/sample/artgraph/images/b.jpg &&
      printf 'track' > data/sample/fma/t1.mp3 && printf 'a,t1' > data/sample/pairs.csv
    outs: [data/sample]
  ingest:
    cmd: mkdir -p data/interim && ls -R data/sample/artgraph data/sample/fma > data/interim/artworks.txt
    deps: [data/sample/artgraph, data/sample/fma]
    outs: [data/interim/artworks.txt]
  validate_raw:
    cmd: >-
      mkdir -p data/reports && printf '{"success": true, "statistics": {"evaluated_expectations": 3,
      "unsuccessful_expectations": 0}}' > data/reports/validate_raw.json
    deps: [data/interim/artworks.txt]
    outs: [{data/reports/validate_raw.json: {cache: false}}]
  split:
    cmd: mkdir -p data/processed && cat data/interim/artworks.txt data/sample/pairs.csv > data/processed/splits.txt
    deps: [stages/split.py, data/reports/validate_raw.json, data/interim/artworks.txt, data/sample/pairs.csv]
    outs: [data/processed/splits.txt]
  prior:
    cmd: mkdir -p models/prior && cat data/sample/fma/t1.mp3 > models/prior/weights.bin
    deps: [data/sample/fma]
    outs: [models/prior]
  train:
    cmd: cat models/prior/weights.bin data/processed/splits.txt > models/aligner.bin
    deps: [models/prior, data/processed/splits.txt]
    outs: [models/aligner.bin]
  evaluate:
    cmd: cat models/aligner.bin > data/evaluation.txt
    deps: [models/aligner.bin]
    outs: [data/evaluation.txt]
"""
TRAINING_INPUTS = {"data/sample", "data/sample/artgraph", "data/sample/fma", "data/sample/pairs.csv",
                   "data/interim/artworks.txt", "data/processed/splits.txt", "models/prior"}


def sh(command: list[str], root: Path) -> str:
    result = subprocess.run(command, cwd=root, env=project_env(root), capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The miniature project after `dvc repro` and `dvc push` to its local remote, committed."""
    root = tmp_path_factory.mktemp("mini")
    (root / "stages").mkdir()
    (root / "stages" / "split.py").write_text("# the split stage's code\n")
    shutil.copy2(ROOT / "params.yaml", root / "params.yaml")
    (root / "dvc.yaml").write_text(PIPELINE)
    sh(["git", "init", "-q", "-b", "main"], root)
    sh([str(BIN / "dvc"), "init", "-q"], root)
    sh([str(BIN / "dvc"), "remote", "add", "-d", "local", str(root.parent / f"{root.name}-remote")], root)
    sh([str(BIN / "dvc"), "repro", "-q"], root)
    sh([str(BIN / "dvc"), "push", "-q"], root)
    sh(["git", "add", "-A"], root)
    sh(["git", "commit", "-q", "-m", "mini"], root)
    return root


def new_store(folder: Path) -> MlflowClient:
    """An empty tracking store in `folder` (its artifacts there too)."""
    client = MlflowClient(tracking_uri=f"sqlite:///{folder}/mlflow.db")
    client.create_experiment("art2mus", artifact_location=(folder / "artifacts").as_uri())
    return client


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    client = new_store(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", client.tracking_uri)
    return client


def train_run(client: MlflowClient) -> str:
    """A finished `train` run, as the stage leaves it."""
    experiment = client.get_experiment_by_name("art2mus").experiment_id
    run = client.create_run(experiment, run_name="train", tags={"art2mus.stage": "train"})
    client.set_terminated(run.info.run_id)
    return run.info.run_id


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


def register(project: Path, client: MlflowClient, tiny_model: Path, run_id: str, number: int = 1) -> str:
    record = {"weights_sha256": f"{number:064x}", "prior": "tiny-prior", "mlflow_run_id": run_id,
              "backbone": {"profile": "tiny", "source": "tiny", "revision": "main"}, "image_encoder_id": "tiny-enc"}
    registered = register_model(tiny_model, record, collect_lineage(project), client=client, root=project)
    return registered.version


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# --- what training read ----------------------------------------------------------------------------------


def test_closure_follows_producers_and_skips_code_reports_and_downstream(project: Path) -> None:
    inputs = training_inputs(project / "dvc.lock")
    assert set(inputs) == TRAINING_INPUTS
    assert inputs["data/sample/pairs.csv"] == md5(b"a,t1")
    assert inputs["data/sample"].endswith(".dir") and inputs["models/prior"].endswith(".dir")
    # What the stage knows before dvc.lock has its own entry: the producing outputs and everything upstream.
    assert upstream_inputs(project / "dvc.lock", ["models/prior", "data/processed/splits.txt"]) == inputs


def test_closure_prefers_what_the_consumer_read_over_a_newer_output() -> None:
    stages = {"make": {"outs": [{"path": "data/x", "md5": "new"}]},
              "use": {"deps": [{"path": "data/x", "md5": "old"}, {"path": "art2mus/code.py", "md5": "c"}]}}
    assert input_closure(stages, [("data/x", "old")]) == {"data/x": "old"}
    assert input_closure(stages, [("data/x", None)]) == {"data/x": "new"}
    assert input_closure({}, [("data/raw/artgraph", "r.dir")]) == {"data/raw/artgraph": "r.dir"}  # dvc add'ed


def test_inputs_checked_against_cache_and_remote(project: Path, tmp_path: Path) -> None:
    statuses = {item["path"]: item for item in check_inputs(project, training_inputs(project / "dvc.lock"))}
    assert all(item["cache"] == item["remote"] == "present" for item in statuses.values()), statuses
    # A dependency inside another stage's output has no object of its own: found through that output.
    assert statuses["data/sample/artgraph"]["stored_as"] == "data/sample"
    assert statuses["data/sample/artgraph"]["files"] == 2

    copy = tmp_path / "copy"
    shutil.copytree(project, copy)
    remote = copy.parent / "remote"
    shutil.copytree(project.parent / f"{project.name}-remote", remote)
    sh([str(BIN / "dvc"), "remote", "modify", "local", "url", str(remote)], copy)
    image = md5(b"pieta")
    for objects in (remote, copy / ".dvc" / "cache"):
        (objects / "files" / "md5" / image[:2] / image[2:]).unlink()
    inputs = training_inputs(copy / "dvc.lock")
    statuses = {item["path"]: item for item in check_inputs(copy, inputs)}
    assert statuses["data/sample/artgraph"]["cache"].startswith("partial (2 of 3")
    assert statuses["data/sample/fma"]["cache"] == "present"
    assert unavailable({"inputs": list(statuses.values())}) == ["data/sample", "data/sample/artgraph"]


def test_recorded_inputs_restore_into_a_fresh_clone_from_the_remote(project: Path, tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    sh([str(BIN / "dvc"), "remote", "modify", "--local", "local", "url", str(project.parent / f"{project.name}-remote")],
       clone)
    recorded = {path: md5 for path, md5 in training_inputs(project / "dvc.lock").items()
                if path in ("models/prior", "data/processed/splits.txt", "data/sample")}
    restore_inputs(clone, recorded)
    for path in ("models/prior/weights.bin", "data/processed/splits.txt", "data/sample/artgraph/images/a.jpg"):
        assert (clone / path).read_bytes() == (project / path).read_bytes()
    assert not (clone / "models" / "aligner.bin").exists()  # only what was asked for
    with pytest.raises(Art2MusError, match="could not fetch 1 recorded object"):
        restore_inputs(clone, {"data/gone.csv": md5(b"never pushed")})


# --- the train run and the model version ----------------------------------------------------------------


def test_registration_completes_the_train_run_idempotently(project: Path, store: MlflowClient,
                                                           tiny_model: Path) -> None:
    run_id = train_run(store)
    paths = ["models/prior", "data/processed/splits.txt"]
    record_training_lineage(StageRun(run_id=run_id, stage="train"), project, paths)
    tags = store.get_run(run_id).data.tags
    assert tags[COMPLETE_TAG] == "false" and tags["gate.validate_raw"] == "passed"
    assert set(json.loads(tags[INPUTS_TAG])) == TRAINING_INPUTS

    version = register(project, store, tiny_model, run_id)
    run = store.get_run(run_id)
    expected = training_inputs(project / "dvc.lock")
    assert run.data.tags[COMPLETE_TAG] == "true"
    assert run.data.tags["git.commit"] == sh(["git", "rev-parse", "HEAD"], project).strip()
    logged = {(item.dataset.name, item.dataset.digest) for item in run.inputs.dataset_inputs}
    assert logged == set(expected.items())
    artifacts = {item.path for item in store.list_artifacts(run_id, LINEAGE_ARTIFACTS)}
    assert {f"{LINEAGE_ARTIFACTS}/params.yaml", f"{LINEAGE_ARTIFACTS}/dvc.lock", f"{LINEAGE_ARTIFACTS}/reports",
            f"{LINEAGE_ARTIFACTS}/lineage.json"} <= artifacts
    tags = store.get_model_version(MODEL_NAME, version).tags
    assert json.loads(tags[INPUTS_TAG]) == expected
    assert json.loads(tags["gates"])["validate_raw"]["success"] is True
    assert "torch" in json.loads(tags["libraries"]) and tags["train_run_id"] == run_id

    assert register(project, store, tiny_model, run_id) == version  # the same model again: nothing new
    assert len(store.get_run(run_id).inputs.dataset_inputs) == len(expected)


# --- the command ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registered(project: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowClient]:
    """Version 1 (the champion) trained on the project's data; version 2 claims other data. Commands run
    in the project on this store."""
    client = new_store(tmp_path_factory.mktemp("registered"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", client.tracking_uri)
        version = register(project, client, tiny_model, train_run(client))
        client.set_registered_model_alias(MODEL_NAME, CHAMPION, version)
        other = client.create_model_version(MODEL_NAME, source=client.get_model_version(MODEL_NAME, version).source,
                                            tags={INPUTS_TAG: json.dumps({"data/raw/other.csv": md5(b"other")})})
        assert (version, str(other.version)) == ("1", "2")
        patch.chdir(project)
        yield client


def test_forward_prints_the_chain(registered: MlflowClient) -> None:
    result = CliRunner().invoke(app, ["lineage", f"models:/{MODEL_NAME}@{CHAMPION}"])
    assert result.exit_code == 0, result.output
    for expected in ("alias      champion -> version 1", "commit", "train: batch_size=", "data/sample/artgraph",
                     "validate_raw: passed 3 expectations", "libraries  "):
        assert expected in result.output
    chain = json.loads(CliRunner().invoke(app, ["lineage", f"models:/{MODEL_NAME}/1", "--json"]).stdout)
    assert chain["version"] == "1" and chain["alias"] is None
    assert {item["path"] for item in chain["inputs"]} == TRAINING_INPUTS
    assert {item["remote"] for item in chain["inputs"]} == {"present"}
    assert chain["params"]["train"]["steps"] > 0


def test_forward_exit_codes(registered: MlflowClient) -> None:
    missing = CliRunner().invoke(app, ["lineage", f"models:/{MODEL_NAME}/2"])  # its data is nowhere
    assert missing.exit_code == 1 and "data/raw/other.csv" in missing.output
    unknown = CliRunner().invoke(app, ["lineage", f"models:/{MODEL_NAME}@nobody"])
    assert unknown.exit_code == 2 and "aliases: champion->1" in unknown.output
    assert CliRunner().invoke(app, ["lineage"]).exit_code == 2
    with pytest.raises(Art2MusError, match="not a model URI"):
        parse_model_uri("runs:/abc/model")


def test_reverse_finds_every_version_through_its_inputs(registered: MlflowClient, project: Path) -> None:
    result = CliRunner().invoke(app, ["lineage", "--data", "data/sample/artgraph/images/b.jpg"])
    assert result.exit_code == 0, result.output
    assert "version 1 @champion" in result.output
    assert "through data/sample/artgraph (" in result.output and "-> contains images/b.jpg" in result.output
    assert "version 2" not in result.output
    found = versions_using(registered, md5(b"other"), project)  # a hash alone, for data already deleted
    assert [hit["version"] for hit in found["versions"]] == ["2"]
    as_json = json.loads(CliRunner().invoke(app, ["lineage", "--data", "data/sample/pairs.csv", "--json"]).stdout)
    assert [(hit["version"], hit["through"][0]["input"]) for hit in as_json["versions"]] == [
        ("1", "data/sample/pairs.csv")]


def test_reverse_says_when_no_version_used_the_data(registered: MlflowClient, tmp_path: Path) -> None:
    unknown = tmp_path / "never-seen.jpg"
    unknown.write_bytes(b"not in any training set")
    result = CliRunner().invoke(app, ["lineage", "--data", str(unknown)])
    assert result.exit_code == 1 and "used by no version" in result.output
    bad = CliRunner().invoke(app, ["lineage", "--data", "no/such/file.jpg"])
    assert bad.exit_code == 2 and "not a DVC md5" in bad.output
