"""`art2mus gc` on a synthetic DVC cache and a SQLite MLflow store with five registered versions.

History: versions 1, 2, 3 promoted in turn (3 is the champion, 2 the one rollback target that
gc.keep_versions = 1 keeps, 1 beyond it), 4 the challenger, 5 a failed candidate that shares 4's
train run. The versions' recorded data (tags `data_hashes`, `training_data_hashes`) overlap, one
champion input is a directory (a `.dir` manifest), the workspace's dvc.lock has that directory and
one more object as cached outputs, version 2 recorded a folder DVC never cached (its manifest is
nowhere: not an error), and one object is referenced by nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from filelock import FileLock
from mlflow import MlflowClient
from typer.testing import CliRunner

from art2mus.config import GcParams
from art2mus.errors import Art2MusError
from art2mus.tracking.gc import DELETED_TAG, collect_garbage
from art2mus.tracking.registry import MODEL_NAME, ensure_registered_model, promote, set_challenger

MODEL_CODE = '''
import mlflow.pyfunc
import pandas as pd


class Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return model_input


mlflow.models.set_model(Echo())
'''


@dataclass
class Store:
    root: Path
    client: MlflowClient
    objects: dict[str, str]  # name -> object id
    artifacts: dict[tuple[str, str], Path]  # (version, kind) -> artifact folder


def cache_path(root: Path, oid: str) -> Path:
    return root / ".dvc" / "cache" / "files" / "md5" / oid[:2] / oid[2:]


def add_object(root: Path, content: bytes) -> str:
    oid = hashlib.md5(content).hexdigest()
    path = cache_path(root, oid)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return oid


def add_directory(root: Path, files: dict[str, str]) -> str:
    """A `.dir` manifest (DVC's JSON list of relpath and md5) listing already cached files."""
    manifest = json.dumps([{"md5": oid, "relpath": name} for name, oid in sorted(files.items())],
                          separators=(", ", ": ")).encode()
    oid = hashlib.md5(manifest).hexdigest() + ".dir"
    path = cache_path(root, oid)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(manifest)
    return oid


def local_folder(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


def register(client: MlflowClient, experiment: str, code: Path, data: dict[str, str],
             train_run: str | None = None) -> tuple:
    """A version like the registry makes: a register run with a pyfunc, a train run, lineage tags."""
    if train_run is None:
        with mlflow.start_run(experiment_id=experiment, run_name="train") as run:
            mlflow.log_dict({"loss": [1.0, 0.5]}, "curves/loss.json")
        train_run = run.info.run_id
    with mlflow.start_run(experiment_id=experiment, run_name="register") as run:
        mlflow.log_dict(data, "lineage.json")
        logged = mlflow.pyfunc.log_model(name="art2mus", python_model=str(code),
                                         pip_requirements=["mlflow"])
    version = client.create_model_version(MODEL_NAME, source=logged.model_uri, run_id=run.info.run_id,
                                          model_id=logged.model_id,
                                          tags={"data_hashes": json.dumps(data), "train_run_id": train_run,
                                                "training_data_hashes": json.dumps(data)})
    return str(version.version), logged.model_id, run.info.run_id, train_run


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Store]:
    """The store, built once; each test restores it at the same absolute path (the store records paths)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        built = build_store(tmp_path_factory.mktemp("gc"), monkeypatch)
    snapshot = built.root.parent / "snapshot"
    shutil.copytree(built.root, snapshot, symlinks=True)
    return snapshot, built


@pytest.fixture
def store(template: tuple[Path, Store], monkeypatch: pytest.MonkeyPatch) -> Store:
    snapshot, built = template
    for entry in built.root.iterdir():  # mlflow.db is rewritten in place: MLflow keeps its engine open
        if entry.name != "mlflow.db":
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    shutil.copytree(snapshot, built.root, symlinks=True, dirs_exist_ok=True)
    uri = f"sqlite:///{built.root / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    project_state = {"PREFECT_HOME": built.root / ".prefect", "DVC_SITE_CACHE_DIR": built.root / ".dvc" / "tmp" / "site"}
    for name, value in project_state.items():
        monkeypatch.setenv(name, str(value))  # what the CLI would set for the project, undone after the test
    mlflow.set_tracking_uri(uri)
    monkeypatch.chdir(built.root)
    return Store(built.root, MlflowClient(uri), built.objects, built.artifacts)


def build_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    from dvc.repo import Repo

    root = tmp_path / "project"
    root.mkdir()
    Repo.init(str(root), no_scm=True).close()
    (root / "params.yaml").write_text(yaml.safe_dump({"gc": {"keep_versions": 1}}))
    objects = {name: add_object(root, f"{name} contents".encode()) for name in
               ("only_v1", "shared_v1_v3", "champion", "d1", "d2", "f1", "previous", "challenger", "workspace",
                "orphan")}
    objects["champion_dir"] = add_directory(root, {"a.wav": objects["d1"], "b.wav": objects["d2"]})
    objects["failed_dir"] = add_directory(root, {"a.wav": objects["f1"], "b.wav": objects["d2"]})
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"prepare": {
        "cmd": "python -m stages.prepare", "outs": ["data/audio", "data/w.csv"]}}}))
    (root / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {"prepare": {
        "cmd": "python -m stages.prepare",
        "outs": [{"path": "data/audio", "hash": "md5", "md5": objects["champion_dir"], "size": 36, "nfiles": 2},
                 {"path": "data/w.csv", "hash": "md5", "md5": objects["workspace"], "size": 18}]}}}))

    uri = f"sqlite:///{root / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("art2mus", artifact_location=(root / "mlartifacts").as_uri())
    client = MlflowClient(uri)
    code = tmp_path / "model_code.py"
    code.write_text(MODEL_CODE)
    ensure_registered_model(client)
    data = {
        "1": {"data/a.csv": objects["only_v1"], "data/s.csv": objects["shared_v1_v3"]},
        "2": {"data/p.csv": objects["previous"], "data/sample/inside": "0" * 32 + ".dir"},
        "3": {"data/c.csv": objects["champion"], "data/s.csv": objects["shared_v1_v3"],
              "data/audio": objects["champion_dir"]},
        "4": {"data/h.csv": objects["challenger"]},
    }
    artifacts: dict[tuple[str, str], Path] = {}
    train_runs = {}
    for number, recorded in data.items():
        version, model_id, register_run, train_run = register(client, experiment, code, recorded)
        assert version == number
        train_runs[version] = train_run
        artifacts[version, "logged model"] = local_folder(client.get_logged_model(model_id).artifact_location)
        artifacts[version, "register run"] = local_folder(client.get_run(register_run).info.artifact_uri)
        artifacts[version, "train run"] = local_folder(client.get_run(train_run).info.artifact_uri)
    version, model_id, register_run, _ = register(client, experiment, code, {"data/audio": objects["failed_dir"]},
                                                  train_run=train_runs["4"])
    artifacts["5", "logged model"] = local_folder(client.get_logged_model(model_id).artifact_location)
    artifacts["5", "register run"] = local_folder(client.get_run(register_run).info.artifact_uri)
    for number in ("1", "2", "3"):
        promote(number, "tests", client=client, smoke=False)
    set_challenger("4", client)
    return Store(root, client, objects, artifacts)


def present(store: Store) -> set[str]:
    return {name for name, oid in store.objects.items() if cache_path(store.root, oid).is_file()}


UNKEPT_OBJECTS = {"only_v1", "f1", "failed_dir", "orphan"}
# 5's train run is the challenger's: kept. Register runs keep their documents (lineage.json): the audit trail.
UNKEPT_ARTIFACTS = {("1", "logged model"), ("1", "train run"), ("5", "logged model")}


def test_gc_lists_exactly_the_unkept_then_deletes_exactly_those_and_a_second_gc_is_a_no_op(store: Store) -> None:
    config = GcParams(keep_versions=1)
    plan = collect_garbage(store.root, config, store.client)
    assert plan.kept == {"3": "champion", "4": "challenger", "2": "previous champion (1 rollback back)"}
    assert {item.oid for item in plan.cache_objects} == {store.objects[name] for name in UNKEPT_OBJECTS}
    assert all(item.size == os.path.getsize(item.path) > 0 for item in plan.cache_objects)
    assert {(item.version, item.kind) for item in plan.artifacts} == UNKEPT_ARTIFACTS
    assert all(item.size > 0 and item.files > 0 for item in plan.artifacts)
    assert present(store) == set(store.objects)  # the dry run deleted nothing
    assert all(folder.is_dir() for folder in store.artifacts.values())

    deleted = collect_garbage(store.root, config, store.client, delete=True)
    assert deleted.deleted and {item.oid for item in deleted.cache_objects} == {item.oid for item in plan.cache_objects}
    assert present(store) == set(store.objects) - UNKEPT_OBJECTS
    for key, folder in store.artifacts.items():
        assert (not folder.exists() or not any(folder.iterdir())) == (key in UNKEPT_ARTIFACTS), key
    tags = {str(found.version): found.tags for found in store.client.search_model_versions(f"name = '{MODEL_NAME}'")}
    assert sorted(version for version, version_tags in tags.items() if DELETED_TAG in version_tags) == ["1", "5"]

    champion = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
    assert champion.predict(pd.DataFrame({"x": [1]}))["x"].tolist() == [1]

    again = collect_garbage(store.root, config, store.client, delete=True)
    assert again.empty and present(store) == set(store.objects) - UNKEPT_OBJECTS


def test_the_policy_knob_keeps_more_rollback_targets(store: Store) -> None:
    plan = collect_garbage(store.root, GcParams(keep_versions=2), store.client)
    assert plan.kept["1"] == "previous champion (2 rollbacks back)"
    assert {item.oid for item in plan.cache_objects} == {store.objects[name] for name in ("f1", "failed_dir", "orphan")}
    assert {(item.version, item.kind) for item in plan.artifacts} == {("5", "logged model")}


def test_the_cli_dry_run_lists_with_sizes_and_deletes_nothing(store: Store) -> None:
    from art2mus.cli.main import app

    result = CliRunner().invoke(app, ["gc"])
    assert result.exit_code == 0, result.output
    assert "gc: keeping versions: 3 (champion), 4 (challenger), 2 (previous champion (1 rollback back))" in result.output
    assert "would remove 4 DVC cache object(s)" in result.output
    orphan = store.objects["orphan"]
    assert f"bytes  .dvc/cache/files/md5/{orphan[:2]}/{orphan[2:]}" in result.output
    assert "version 1 logged model m-" in result.output and "version 1 train run" in result.output
    assert "dry run, nothing deleted" in result.output and "art2mus gc --yes" in result.output
    assert present(store) == set(store.objects)
    result = CliRunner().invoke(app, ["gc", "--yes"])
    assert result.exit_code == 0 and "removed 4 DVC cache object(s)" in result.output, result.output
    assert CliRunner().invoke(app, ["gc"]).output.endswith("gc: nothing to remove\n")


def test_a_cached_directory_whose_manifest_is_nowhere_stops_gc_and_the_remote_can_supply_it(store: Store) -> None:
    from dvc.repo import Repo

    manifest = cache_path(store.root, store.objects["champion_dir"])
    content = manifest.read_bytes()
    manifest.unlink()
    with pytest.raises(Art2MusError, match=r"the workspace: the directory manifest of data/audio \(.*\.dir\) is "
                                           r"neither in the DVC cache nor in the default remote"):
        collect_garbage(store.root, GcParams(keep_versions=1), store.client, delete=True)
    assert present(store) == set(store.objects) - {"champion_dir"}  # its files d1, d2 were not taken for garbage
    remote = store.root.parent / "remote"
    in_remote = remote / "files" / "md5" / store.objects["champion_dir"][:2] / store.objects["champion_dir"][2:]
    in_remote.parent.mkdir(parents=True)
    in_remote.write_bytes(content)
    with Repo(str(store.root)) as repo, repo.config.edit() as config:
        config["core"]["remote"] = "store"
        config["remote"]["store"] = {"url": str(remote)}
    plan = collect_garbage(store.root, GcParams(keep_versions=1), store.client, delete=True)
    assert {item.oid for item in plan.cache_objects} == {store.objects[name] for name in UNKEPT_OBJECTS}
    assert {"d1", "d2"} <= present(store)


def test_gc_refuses_while_a_retrain_holds_the_project(store: Store) -> None:
    with FileLock(store.root / ".dvc" / "tmp" / "art2mus-retrain.lock"), \
            pytest.raises(Art2MusError, match="a retrain is running"):
        collect_garbage(store.root, GcParams(), store.client, delete=True)
    assert present(store) == set(store.objects)
