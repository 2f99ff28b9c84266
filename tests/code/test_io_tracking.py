"""Atomic writes and the MLflow run context every stage uses."""

from pathlib import Path

import pytest

from art2mus.config import SplitParams
from art2mus.errors import Art2MusError
from art2mus.io import atomic_path, read_json, write_json_atomic, write_text_atomic
from art2mus.tracking.runs import flatten, stage_run, tracking_uri


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
