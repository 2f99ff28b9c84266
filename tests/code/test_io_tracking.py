"""Atomic writes and the MLflow run context every stage uses."""

import logging
import os
import shutil
from pathlib import Path

import pytest

from art2mus.config import SplitParams
from art2mus.errors import Art2MusError
from art2mus.io import atomic_path, read_json, write_json_atomic, write_text_atomic
from art2mus.tracking.runs import flatten, stage_run
from art2mus.workspace import tracking_uri


def test_atomic_path_replaces_files_and_directories_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    write_text_atomic("old", target)
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old"
    folder = tmp_path / "folder"
    for content in ("first", "second"):
        with atomic_path(folder) as tmp:
            tmp.mkdir()
            (tmp / "file").write_text(content)
    assert (folder / "file").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "out.txt"]


def test_tracking_uri_defaults_to_sqlite_in_the_project(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri(tmp_path) == "http://127.0.0.1:5000"


def test_flatten_gives_dotted_keys() -> None:
    assert flatten({"ratios": {"train": 0.7, "val": {"x": 1}}, "seed": 0}) == {
        "ratios.train": 0.7, "ratios.val.x": 1, "seed": 0}


def test_stage_run_logs_params_metrics_artifacts_and_fails_cleanly(tmp_path: Path, monkeypatch) -> None:
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "params.yaml").write_text("{}\n")
    report = tmp_path / "report.json"
    report.write_text("{}")
    with stage_run("split", SplitParams(), "test-exp", root=tmp_path) as run:
        run.log_metrics({"pairs_train": 10})
        run.log_artifact(report)
    with pytest.raises(ValueError):
        with stage_run("split", SplitParams(), "test-exp", root=tmp_path):
            raise ValueError("boom")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    ok = client.get_run(run.run_id)
    assert ok.data.params["ratios.train"] == "0.7"
    assert ok.data.metrics["pairs_train"] == 10
    assert ok.data.tags["art2mus.stage"] == "split"
    assert [a.path for a in client.list_artifacts(run.run_id)] == ["report.json"]
    assert (tmp_path / "mlartifacts").is_dir()
    runs = client.search_runs([ok.info.experiment_id], order_by=["attributes.start_time DESC"])
    assert runs[0].info.status == "FAILED"


def test_read_json_names_a_broken_file_and_reads_a_good_one(tmp_path: Path) -> None:
    good, broken = tmp_path / "good.json", tmp_path / "models" / "model.json"
    write_json_atomic({"weights_sha256": "ab"}, good)
    assert read_json(good) == {"weights_sha256": "ab"}
    broken.parent.mkdir()
    broken.write_text('{"weights_sha256": ', encoding="utf-8")  # truncated by a crash elsewhere
    with pytest.raises(Art2MusError, match=r"models/model\.json: not valid JSON"):
        read_json(broken)


def artifact_files(root: Path) -> set[str]:
    folder = root / "mlartifacts"
    return {str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()} if folder.is_dir() else set()


def log_report(root: Path, text: str) -> str:
    """A stage run in the project at `root` that logs one small artifact; its run id (as its own process
    would: mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI, which would carry one project's store over)."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    report = root / "report.txt"
    report.write_text(text)
    with stage_run("split", SplitParams(), "art2mus", root=root) as run:
        run.log_artifact(report)
    return run.run_id


def project_with_a_run(root: Path) -> str:
    """A project at `root` (an empty params.yaml) with one stage run whose artifact says 'logged in A'; its run id."""
    root.mkdir()
    (root / "params.yaml").write_text("{}\n")
    return log_report(root, "logged in A")


def test_a_copied_project_writes_its_artifacts_into_itself_and_reads_the_copied_ones(
        tmp_path: Path, monkeypatch, caplog) -> None:
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    original, copy = tmp_path / "A", tmp_path / "B"
    first = project_with_a_run(original)
    in_original = artifact_files(original)
    shutil.copytree(original, copy)

    with caplog.at_level(logging.WARNING, logger="art2mus.tracking.runs"):
        second = log_report(copy, "logged in B")

    assert artifact_files(original) == in_original  # nothing of B's run landed in A
    assert f"{copy / 'mlartifacts'}" in caplog.text and "relocated" in caplog.text  # it says what it changed
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{copy}/mlflow.db")
    for run_id, text in ((first, "logged in A"), (second, "logged in B")):
        assert client.get_run(run_id).info.artifact_uri.startswith((copy / "mlartifacts").as_uri())
        assert Path(client.download_artifacts(run_id, "report.txt", str(tmp_path / run_id))).read_text() == text
    assert client.get_experiment_by_name("art2mus").artifact_location == (copy / "mlartifacts").as_uri()
    original_client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{original}/mlflow.db")
    assert original_client.get_experiment_by_name("art2mus").artifact_location == (original / "mlartifacts").as_uri()


def test_the_registry_of_a_copied_project_reads_and_deletes_only_its_own_artifacts(tmp_path: Path, monkeypatch) -> None:
    """`art2mus gc`, `promote`, `history` open the store through registry_client: no run needs to come first."""
    from art2mus.tracking.client import registry_client

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    original, copy = tmp_path / "A", tmp_path / "B"
    run_id = project_with_a_run(original)
    shutil.copytree(original, copy)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    client = registry_client(copy)
    assert client.get_run(run_id).info.artifact_uri.startswith((copy / "mlartifacts").as_uri())
    assert client.get_experiment_by_name("art2mus").artifact_location == (copy / "mlartifacts").as_uri()


def test_relocating_a_store_copied_without_its_artifacts_names_what_is_missing(tmp_path: Path, monkeypatch) -> None:
    from art2mus.tracking.runs import relocate_store

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    original, clone = tmp_path / "A", tmp_path / "C"
    run_id = project_with_a_run(original)
    clone.mkdir()
    for name in ("params.yaml", "mlflow.db"):  # a clone given the database only
        shutil.copy(original / name, clone / name)

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    planned = relocate_store(clone, dry_run=True)
    assert planned is not None and planned.old_root == original and planned.new_root == clone
    assert planned.changed["runs.artifact_uri"] == 1 and planned.changed["experiments.artifact_location"] >= 1
    assert relocate_store(clone, dry_run=True) == planned  # a dry run changes nothing
    done = relocate_store(clone)
    assert done == planned and done.missing == [f"{run_id}/artifacts"]  # in A, not here: named
    assert f"{run_id}/artifacts" in done.summary() and str(original / "mlartifacts") in done.summary()
    assert relocate_store(clone) is None  # nothing left to relocate


def test_cli_relocate_says_what_it_changes(tmp_path: Path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from art2mus.cli.registry import tracking_app

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    original, copy = tmp_path / "A", tmp_path / "B"
    project_with_a_run(original)
    shutil.copytree(original, copy)
    monkeypatch.chdir(copy)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    runner = CliRunner()
    dry = runner.invoke(tracking_app, ["relocate", "--dry-run"])
    assert dry.exit_code == 0 and "would relocate" in dry.output and "1 runs.artifact_uri" in dry.output, dry.output
    done = runner.invoke(tracking_app, ["relocate"])
    assert done.exit_code == 0 and f"relocated to {copy / 'mlartifacts'}" in done.output, done.output
    again = runner.invoke(tracking_app, ["relocate"])
    assert again.exit_code == 0 and "nothing to change" in again.output
