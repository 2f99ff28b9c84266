"""The real `train` stage process: exact resume after SIGKILL, and data parallel under torchrun.

Each test copies the shared `pipeline_repo` (its caches of features, latents and the prior are
reused) and shrinks the `train` section, so it pays only for a few small training runs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.helpers import project_env

pytestmark = pytest.mark.slow

# threads=1: two stage processes share the CI machine's 2 cores without oversubscribing them.
SMALL_TRAIN = {"steps": 12, "batch_size": 8, "hidden_dim": 64, "checkpoint_every": 4, "keep_checkpoints": 2,
               "threads": 1}
TRAIN_OUTPUTS = ("models/aligner", "models/art2mus", "models/train_record.json", "models/plots/train_loss.csv")
CHECKPOINTS = Path("models/aligner/checkpoints")
TIMEOUT = 300


def small_train_project(pipeline_repo: Path, destination: Path) -> Path:
    """A copy of the pipeline project with a small `train` section and none of the train outputs."""
    shutil.copytree(pipeline_repo, destination, symlinks=True)
    params_file = destination / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["train"].update(SMALL_TRAIN)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    for name in TRAIN_OUTPUTS:
        path = destination / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    return destination


def start_stage(root: Path) -> subprocess.Popen:
    """`python -m stages.train` in `root` as its own process, its output in root/train.log."""
    with open(root / "train.log", "wb") as log:  # the child keeps its own handle
        return subprocess.Popen([sys.executable, "-m", "stages.train"], cwd=root, env=project_env(root),
                                stdout=log, stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen, root: Path) -> None:
    assert process.wait(timeout=TIMEOUT) == 0, (root / "train.log").read_text()[-3000:]


def wait_for_first_checkpoint(process: subprocess.Popen, root: Path) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not list((root / CHECKPOINTS).glob("step-*")):
        assert process.poll() is None, f"the stage ended before its first checkpoint:\n{(root / 'train.log').read_text()}"
        assert time.monotonic() < deadline, "no checkpoint within the timeout"
        time.sleep(0.02)


def record(root: Path) -> dict:
    return json.loads((root / "models/train_record.json").read_text())


def interrupted_writes(root: Path) -> list[Path]:
    """What atomic_path leaves when its process dies mid-write: hidden `.<name>.*.tmp` / `.old` folders."""
    return [path for path in (root / "models").rglob(".*") if path.suffix in (".tmp", ".old")]


def test_a_sigkilled_train_stage_resumes_to_the_weights_of_an_uninterrupted_run(
    pipeline_repo: Path, tmp_path: Path
) -> None:
    import torch

    from art2mus.training.aligner import STATE_FILE

    whole = small_train_project(pipeline_repo, tmp_path / "whole")
    killed = small_train_project(pipeline_repo, tmp_path / "killed")
    uninterrupted = start_stage(whole)
    victim = start_stage(killed)
    wait_for_first_checkpoint(victim, killed)
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait(timeout=TIMEOUT) == -signal.SIGKILL

    # The killed process left complete checkpoints and no (partial) final output.
    for name in ("models/aligner/aligner", "models/art2mus", "models/train_record.json", "models/plots/train_loss.csv"):
        assert not (killed / name).exists(), name
    checkpoints = sorted((killed / CHECKPOINTS).glob("step-*"))
    assert checkpoints
    for checkpoint in checkpoints:
        state = torch.load(checkpoint / STATE_FILE, weights_only=True)
        assert checkpoint.name == f"step-{state['step']:07d}"
        assert (checkpoint / "aligner" / "diffusion_pytorch_model.safetensors").is_file()

    # A kill during a save would also leave atomic_path temporaries (this one landed mid-training):
    # plant the two kinds, a newer partial checkpoint and a partial model, for the re-run to ignore and clear.
    (killed / CHECKPOINTS / ".step-0000012.killed.tmp" / "step-0000012" / "aligner").mkdir(parents=True)
    (killed / "models" / ".art2mus.killed.tmp" / "art2mus" / "aligner").mkdir(parents=True)

    finish(start_stage(killed), killed)  # resume is the stage's default
    finish(uninterrupted, whole)
    assert record(whole)["resumed_from"] == 0
    assert record(killed)["resumed_from"] in (4, 8, 12)
    assert record(killed)["weights_sha256"] == record(whole)["weights_sha256"]
    assert interrupted_writes(killed) == []
    assert len(pd.read_csv(killed / "models/plots/train_loss.csv")) == SMALL_TRAIN["steps"]


def train_runs(root: Path) -> dict:
    """The project store's MLflow runs of the `train` stage, by run id."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{(root / 'mlflow.db').as_posix()}")
    experiment_ids = [experiment.experiment_id for experiment in client.search_experiments()]
    runs = client.search_runs(experiment_ids, filter_string="tags.`art2mus.stage` = 'train'")
    return {run.info.run_id: run for run in runs}


def test_train_stage_under_torchrun_trains_data_parallel_and_only_rank_zero_tracks_and_writes(
    pipeline_repo: Path, tmp_path: Path
) -> None:
    from art2mus.models.aligner import state_dict_sha256
    from art2mus.models.pipeline import Art2MusPipeline

    root = small_train_project(pipeline_repo, tmp_path / "project")
    before = train_runs(root)
    result = subprocess.run(
        # --standalone: a local rendezvous on a free port (--master_port 0 hangs).
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "stages.train"],
        cwd=root, env={**project_env(root), "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    written = record(root)
    assert written["world_size"] == 2 and written["resumed_from"] == 0
    after = train_runs(root)
    assert set(after) - set(before) == {written["mlflow_run_id"]}  # one run: rank 1 opened none
    run = after[written["mlflow_run_id"]]
    assert run.info.status == "FINISHED"
    assert run.data.tags["train.world_size"] == "2"
    assert run.data.tags["aligner.weights_sha256"] == written["weights_sha256"]
    assert run.data.params["steps"] == str(SMALL_TRAIN["steps"])

    assert sorted(path.name for path in (root / CHECKPOINTS).iterdir()) == ["step-0000008", "step-0000012"]
    assert len(pd.read_csv(root / "models/plots/train_loss.csv")) == SMALL_TRAIN["steps"]
    assert interrupted_writes(root) == []
    pipeline = Art2MusPipeline.from_pretrained(root / "models/art2mus")
    assert state_dict_sha256(pipeline.aligner) == written["weights_sha256"]
