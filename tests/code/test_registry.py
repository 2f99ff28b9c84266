"""The registry on a real MLflow SQLite store: idempotent registration, promotion, rollback, history."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from art2mus.cli.main import app
from art2mus.cli.registry import current_user
from art2mus.config import Params
from art2mus.errors import Art2MusError
from art2mus.generation import resolve_model_dir
from art2mus.tracking.dvclock import data_hashes
from art2mus.tracking.lineage import Lineage, collect_lineage, library_versions
from art2mus.tracking.logged_model import RUNTIME_PACKAGES, runtime_requirements
from art2mus.tracking.registry import (
    CHALLENGER,
    CHAMPION,
    MODEL_NAME,
    aliases,
    champion_version,
    history,
    promote,
    record_validation,
    register_model,
    rollback,
    set_challenger,
)
from tests.tiny_model import build_tiny_model

LINEAGE = Lineage(git_commit="c0ffee", data={"data/processed/splits.parquet": "5plits"},
                  params=Params().model_dump(mode="json"))


def train_record(number: int) -> dict:
    """What the train stage records; the weights hash is what tells versions apart here."""
    return {"weights_sha256": f"{number:064x}", "prior": "tiny-prior-sha", "mlflow_run_id": "",
            "backbone": {"profile": "tiny"}}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def seeded_store(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> tuple[Path, list[str]]:
    """A store holding three registered versions (each test works on its own copy of it)."""
    root = tmp_path_factory.mktemp("registry")
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        versions = [register_model(tiny_model, train_record(n), LINEAGE, client=client, root=root).version
                    for n in (1, 2, 3)]
    return root / "mlflow.db", versions


@pytest.fixture
def client(seeded_store: tuple[Path, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    shutil.copy(seeded_store[0], tmp_path / "mlflow.db")
    shutil.copytree(seeded_store[0].parent / "mlartifacts", tmp_path / "mlartifacts")  # a copy of the project
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    return MlflowClient(tracking_uri=uri)


def versions_holding(client: MlflowClient, alias: str) -> list[str]:
    """Every version whose aliases include `alias` (read version by version)."""
    numbers = [str(v.version) for v in client.search_model_versions(f"name = '{MODEL_NAME}'")]
    return [n for n in numbers if alias in client.get_model_version(MODEL_NAME, n).aliases]


@pytest.mark.slow  # a real MLflow store, logged and loaded pyfuncs
def test_registration_is_idempotent_by_identity_and_carries_lineage(client: MlflowClient, tiny_model: Path,
                                                                     tmp_path: Path) -> None:
    first = client.get_model_version(MODEL_NAME, "1")
    runs_before = len(client.search_runs([client.get_experiment_by_name("art2mus").experiment_id]))
    again = register_model(tiny_model, train_record(1), LINEAGE, client=client, root=tmp_path)
    assert (again.version, again.created, again.identity) == ("1", False, first.tags["identity"])
    assert len(client.search_model_versions(f"name = '{MODEL_NAME}'")) == 3
    assert len(client.search_runs([client.get_experiment_by_name("art2mus").experiment_id])) == runs_before

    new_data = replace(LINEAGE, data={"data/processed/splits.parquet": "changed"})
    changed = register_model(tiny_model, train_record(1), new_data, client=client, root=tmp_path)
    assert changed.created and changed.version == "4" and changed.identity != again.identity

    tags = first.tags
    assert tags["validation_status"] == "pending" and tags["git.commit"] == "c0ffee"
    assert tags["weights_sha256"] == train_record(1)["weights_sha256"] and tags["prior"] == "tiny-prior-sha"
    assert json.loads(tags["data_hashes"]) == LINEAGE.data and json.loads(tags["params"]) == LINEAGE.params
    assert json.loads(tags["image_encoder"])["name"] == "tiny"
    run = client.get_run(first.run_id)
    assert run.data.tags["art2mus.stage"] == "register"
    assert "lineage.json" in [artifact.path for artifact in client.list_artifacts(first.run_id)]


@pytest.mark.slow  # a real MLflow store, logged and loaded pyfuncs
def test_a_model_folder_that_disagrees_with_its_record_is_refused(client: MlflowClient, tiny_model: Path,
                                                                    tmp_path: Path) -> None:
    stale = tmp_path / "stale"
    shutil.copytree(tiny_model, stale)
    info = json.loads((stale / "model.json").read_text())
    (stale / "model.json").write_text(json.dumps({**info, "weights_sha256": "f" * 64}))
    with pytest.raises(Art2MusError, match="the folder and the record are from different runs"):
        register_model(stale, train_record(1), LINEAGE, client=client, root=tmp_path)
    with pytest.raises(Art2MusError, match="not an art2mus model"):
        register_model(tmp_path, train_record(1), LINEAGE, client=client, root=tmp_path)


@pytest.mark.slow  # a real MLflow store, logged and loaded pyfuncs
def test_promotion_rollback_and_history_keep_exactly_one_champion(client: MlflowClient) -> None:
    assert champion_version(client) is None and history(client) == []

    promote("1", by="alice", reason="first run", metrics={"retrieval_top1.challenger": 0.4}, client=client)
    assert versions_holding(client, CHAMPION) == ["1"]
    tags = client.get_model_version(MODEL_NAME, "1").tags
    assert (tags["promoted_by"], tags["previous_champion"]) == ("alice", "none") and tags["promoted_at"]

    set_challenger("2", client)
    promote("2", by="bob", client=client)
    assert versions_holding(client, CHAMPION) == ["2"] and versions_holding(client, CHALLENGER) == []
    assert client.get_model_version(MODEL_NAME, "2").tags["previous_champion"] == "1"

    promote("3", by="bob", client=client, smoke=False)
    rollback(by="carol", client=client)
    assert versions_holding(client, CHAMPION) == ["2"]
    assert client.get_model_version(MODEL_NAME, "3").tags["rolled_back_at"]
    rollback(by="carol", client=client)
    assert versions_holding(client, CHAMPION) == ["1"]
    with pytest.raises(Art2MusError, match="first champion; there is nothing to roll back to"):
        rollback(by="carol", client=client)
    assert promote("1", by="alice", client=client, smoke=False) is None  # already the champion: records nothing

    fresh = MlflowClient(tracking_uri=client.tracking_uri)  # nothing but the store remembers
    events = history(fresh)
    assert [(e.kind, e.previous, e.version, e.by) for e in events] == [
        ("promote", None, "1", "alice"), ("promote", "1", "2", "bob"), ("promote", "2", "3", "bob"),
        ("rollback", "3", "2", "carol"), ("rollback", "2", "1", "carol")]
    assert events[0].metrics == {"retrieval_top1.challenger": 0.4} and events[0].reason == "first run"
    champion_dir = resolve_model_dir(f"models:/{MODEL_NAME}@{CHAMPION}")  # what a flow evaluates
    assert (champion_dir / "model.json").is_file() and (champion_dir / "aligner").is_dir()


@pytest.mark.slow  # a real MLflow store, logged and loaded pyfuncs
def test_the_champion_alias_never_disappears_while_it_moves(client: MlflowClient) -> None:
    promote("1", by="alice", client=client, smoke=False)
    seen: list[str | None] = []
    stop = threading.Event()

    def watch() -> None:
        reader = MlflowClient(tracking_uri=client.tracking_uri)
        while not stop.is_set():
            seen.append(aliases(reader).get(CHAMPION))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for _ in range(3):
            promote("2", by="alice", client=client, smoke=False)
            promote("3", by="alice", client=client, smoke=False)
            rollback(by="alice", client=client)
            rollback(by="alice", client=client)
            assert versions_holding(client, CHAMPION) == ["1"]
    finally:
        stop.set()
        watcher.join()
    assert len(seen) > 10 and set(seen) <= {"1", "2", "3"}, set(seen)


@pytest.mark.slow  # a real MLflow store, logged and loaded pyfuncs
def test_smoke_test_and_failed_validation_block_promotion(client: MlflowClient, tiny_model: Path,
                                                          tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    (broken / "aligner" / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    version = register_model(broken, train_record(9), LINEAGE, client=client, root=tmp_path).version
    promote("1", by="alice", client=client, smoke=False)
    with pytest.raises(Art2MusError, match=f"version {version} failed its smoke test"):
        promote(version, by="alice", client=client)
    assert champion_version(client) == "1"

    record_validation("2", "failed", {"retrieval_top1.lower_bound": -0.05}, ["retrieval_top1: failed"], client)
    with pytest.raises(Art2MusError, match="failed validation"):
        promote("2", by="alice", client=client, smoke=False)
    assert client.get_model_version(MODEL_NAME, "2").tags["decision.retrieval_top1.lower_bound"] == "-0.05"
    promote("2", by="alice", client=client, smoke=False, force=True)
    assert champion_version(client) == "2"


@pytest.mark.slow  # a real MLflow store, logged and loaded pyfuncs
def test_cli_promote_rollback_and_history(client: MlflowClient) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["promote", "1", "--by", "dana", "--reason", "first", "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"{MODEL_NAME}@champion: version 1 (was none)" in result.output
    assert runner.invoke(app, ["promote", "2", "--quiet"]).exit_code == 0
    result = runner.invoke(app, ["promote", "2", "--quiet"])
    assert result.exit_code == 0 and "version 2 already; nothing recorded" in result.output
    result = runner.invoke(app, ["rollback", "--quiet"])
    assert result.exit_code == 0 and "version 1 (rolled back from 2)" in result.output
    events = json.loads(runner.invoke(app, ["history", "--json"]).output)
    assert [(e["kind"], e["version"], e["by"]) for e in events] == [
        ("promote", "1", "dana"), ("promote", "2", current_user()), ("rollback", "1", current_user())]
    text = runner.invoke(app, ["history"]).output
    assert "promote" in text and "rollback" in text and "by dana: first" in text
    result = runner.invoke(app, ["promote", "99"])
    assert result.exit_code == 1 and "has no version 99" in result.output


def test_data_hashes_come_from_dvc_lock_without_code_or_models(tmp_path: Path) -> None:
    lock = {"schema": "2.0", "stages": {
        "split": {"cmd": "python -m stages.split",
                  "deps": [{"path": "stages/split.py", "md5": "code"}, {"path": "data/interim/pairs.parquet", "md5": "p"}],
                  "outs": [{"path": "data/processed/splits.parquet", "md5": "s", "hash": "md5"}]},
        "train": {"deps": [{"path": "art2mus/models/aligner.py", "md5": "code"}, {"path": "models/prior", "md5": "m.dir"}],
                  "outs": [{"path": "models/art2mus", "md5": "a.dir"}]}}}
    (tmp_path / "dvc.lock").write_text(json.dumps(lock))  # JSON is YAML
    assert data_hashes(tmp_path / "dvc.lock") == {"data/interim/pairs.parquet": "p", "data/processed/splits.parquet": "s"}
    assert data_hashes(tmp_path / "missing.lock") == {}


def test_the_logged_model_pins_the_library_versions_lineage_records() -> None:
    pins = runtime_requirements()
    recorded = library_versions()
    assert pins and f"torch=={recorded['torch']}" in pins and f"mlflow=={recorded['mlflow']}" in pins
    assert pins == [f"{package}=={installed}" for package, installed in library_versions(RUNTIME_PACKAGES).items()]


def test_lineage_qualifies_a_dirty_work_tree(tmp_path: Path) -> None:
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t.invalid"]
    (tmp_path / "params.yaml").write_text("{}\n")
    (tmp_path / "art2mus").mkdir()
    (tmp_path / "art2mus" / "model.py").write_text("WIDTH = 1\n")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*git, "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "x"], cwd=tmp_path, check=True)
    clean = collect_lineage(tmp_path)
    assert clean.code_version == clean.git_commit and len(clean.git_commit) == 40
    assert clean.params["promotion"]["floors"] == {"retrieval_top1": 0.25}
    (tmp_path / "params.yaml").write_text("split: {seed: 1}\n")
    edited_params = collect_lineage(tmp_path)  # params are not code: they reach the identity through weights and data
    assert edited_params.git_dirty and edited_params.code_version == clean.git_commit
    assert edited_params.params["split"]["seed"] == 1
    (tmp_path / "art2mus" / "model.py").write_text("WIDTH = 2\n")
    dirty = collect_lineage(tmp_path)
    assert dirty.git_dirty and dirty.code_version.startswith(f"{clean.git_commit}+dirty.")
