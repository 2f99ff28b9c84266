"""The real DVC pipeline on the sample: reproduces, is a no-op the second time, and gates stop it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from tests.helpers import BIN, run

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("pipeline")]  # SHARED_GROUP: first, to start the build

DATA_STAGES = ["sample", "ingest", "validate_raw", "pair", "split", "validate_splits"]
MODEL_STAGES = ["features", "prior", "latents", "train", "evaluate"]


def test_repro_produces_validated_splits(pipeline_repo: Path) -> None:
    splits = pd.read_parquet(pipeline_repo / "data/processed/splits.parquet")
    assert set(splits["split"]) == {"train", "val", "test"}
    assert splits.groupby("artist")["split"].nunique().max() == 1
    assert splits["artwork_id"].is_unique and splits["track_id"].is_unique
    for gate in ("validate_raw", "validate_splits"):
        assert (pipeline_repo / f"data/reports/{gate}.json").is_file()
    status = run([str(BIN / "dvc"), "status"], pipeline_repo)
    assert "up to date" in status.stdout


def test_second_repro_is_a_no_op(pipeline_repo: Path) -> None:
    started = time.perf_counter()
    result = run([str(BIN / "dvc"), "repro"], pipeline_repo)
    elapsed = time.perf_counter() - started
    assert "Running stage" not in result.stdout, result.stdout
    for stage in DATA_STAGES + MODEL_STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in result.stdout
    assert elapsed < 60, f"a no-op repro took {elapsed:.1f} s"


def test_every_stage_logged_an_mlflow_run(pipeline_repo: Path) -> None:
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{pipeline_repo}/mlflow.db")
    experiment = client.get_experiment_by_name("art2mus")
    runs = client.search_runs([experiment.experiment_id])
    stages = {r.data.tags["art2mus.stage"] for r in runs if r.info.status == "FINISHED"}
    assert set(DATA_STAGES + MODEL_STAGES) <= stages
    ingest = next(r for r in runs if r.data.tags["art2mus.stage"] == "ingest")
    assert ingest.data.metrics["artworks"] > 0
    assert ingest.data.tags["git.commit"]


def test_push_to_the_default_local_remote(pipeline_repo: Path) -> None:
    run([str(BIN / "dvc"), "push"], pipeline_repo)
    assert any((pipeline_repo / ".dvcstore").rglob("*")), "the local remote holds the pushed data"


def test_a_failing_gate_stops_the_pipeline_with_a_summary(pipeline_repo: Path) -> None:
    params_path = pipeline_repo / "params.yaml"
    original = params_path.read_text()
    params = yaml.safe_load(original)
    params["validate_raw"]["min_artworks"] = 100_000
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        result = run([str(BIN / "dvc"), "repro"], pipeline_repo, check=False)
        assert result.returncode != 0
        output = result.stdout + result.stderr
        assert "validate_raw" in output and "FAILED" in output
        assert "Traceback" not in output
        report = json.loads((pipeline_repo / "data/reports/validate_raw.json").read_text())
        assert report  # the full results are written even when the gate fails
        assert "Running stage 'pair'" not in result.stdout  # nothing downstream ran
    finally:
        params_path.write_text(original)
        # Only the gate again: the shared run's trained models stay as they are for the other tests.
        run([str(BIN / "dvc"), "repro", "--single-item", "validate_raw"], pipeline_repo)
