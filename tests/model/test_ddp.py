"""Data-parallel training: two CPU processes on gloo under torchrun stay in sync, and the real `train`
stage launches them itself from `train.processes` (no hand-edited dvc.yaml), resuming after a SIGKILL."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from art2mus.config import TrainParams
from art2mus.training import launch
from tests.helpers import BIN, project_env, set_params
from tests.tiny_model import TINY_PROJECT, TINY_UPSTREAM_GROUP

pytestmark = pytest.mark.xdist_group(TINY_UPSTREAM_GROUP)
CHECKPOINTS = Path("models/aligner/checkpoints")
RECORD = Path("models/train_record.json")
TIMEOUT = 600


@pytest.mark.slow
def test_two_gloo_processes_train_the_same_aligner(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    worker = Path(__file__).with_name("ddp_worker.py")
    result = subprocess.run(
        # --standalone: a local rendezvous on a free loopback port.
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(worker), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["world"] for r in records] == [2, 2]
    assert {r["backend"] for r in records} == {"gloo"}
    # Gradients are all-reduced every step, so both processes end with identical weights.
    assert records[0]["sha"] == records[1]["sha"]
    assert (tmp_path / "checkpoints").is_dir()  # written by rank 0 only
    # Rank 0 chose where to resume from (nothing) and rank 1 took its choice without reading the folder.
    assert [r["read_checkpoints"] for r in records] == [True, False]


def test_requested_processes_auto_is_every_visible_gpu_and_at_least_one(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert launch.requested_processes(TrainParams(processes="auto")) == 1
    assert launch.requested_processes(TrainParams(processes=3)) == 3  # CPU: gloo processes
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert launch.requested_processes(TrainParams(processes="auto")) == 4
    assert launch.requested_processes(TrainParams()) == 1
    with pytest.raises(launch.Art2MusError, match="4 GPU"):
        launch.requested_processes(TrainParams(processes=8))


def test_a_worker_knows_it_was_launched(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in launch.LAUNCHED_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert not launch.launched_child()
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert launch.launched_child()


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL a process started with start_new_session=True and its group (dvc, the stage, its launcher)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def project_copy(upstream: Path, destination: Path) -> Path:
    """A copy of the tiny upstream whose `train` runs in 2 processes."""
    shutil.copytree(upstream, destination, symlinks=True)
    set_params(destination, {"train": {"processes": 2}})
    return destination


def start_repro(root: Path) -> subprocess.Popen:
    """`dvc repro train` in its own session (so the test can kill all of it), its output in root/repro.log."""
    with open(root / "repro.log", "wb") as log:
        return subprocess.Popen([str(BIN / "dvc"), "repro", "train"], cwd=root, env=project_env(root), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


def finish(process: subprocess.Popen, root: Path) -> None:
    try:
        code = process.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        kill_group(process)
        raise
    assert code == 0, (root / "repro.log").read_text()[-3000:]


def processes_in(root: Path) -> list[psutil.Process]:
    """Live processes working in `root` (a stage's workers)."""
    found = []
    for process in psutil.process_iter(["cwd"]):
        if process.info["cwd"] and Path(process.info["cwd"]) == root:
            found.append(process)
    return found


def record(root: Path) -> dict:
    return json.loads((root / RECORD).read_text())


@pytest.mark.slow
def test_train_processes_2_launches_two_workers_from_params_and_a_sigkilled_run_resumes_exactly(
    tiny_upstream: Path, tmp_path: Path
) -> None:
    whole = project_copy(tiny_upstream, tmp_path / "whole")
    killed = project_copy(tiny_upstream, tmp_path / "killed")
    started = time.monotonic()
    uninterrupted = start_repro(whole)
    victim = start_repro(killed)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not list((killed / CHECKPOINTS).glob("step-*")):
            assert victim.poll() is None, (killed / "repro.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within the timeout"
            time.sleep(0.02)
        kill_group(victim)  # dvc, the stage and its launcher; the workers die with their launcher
        victim.wait(timeout=60)
        deadline = time.monotonic() + 30
        while processes_in(killed) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert processes_in(killed) == [], "a worker outlived its SIGKILLed launcher"
        assert not (killed / RECORD).exists()

        finish(start_repro(killed), killed)  # the same `dvc repro train` resumes
        finish(uninterrupted, whole)
    finally:
        kill_group(uninterrupted)
        kill_group(victim)
    print(f"2-process dvc repro train (uninterrupted, beside the killed one): {time.monotonic() - started:.0f} s")

    assert record(whole)["world_size"] == 2 and record(whole)["resumed_from"] == 0
    assert record(killed)["world_size"] == 2
    assert record(killed)["resumed_from"] in (4, 8)
    assert record(killed)["weights_sha256"] == record(whole)["weights_sha256"]
    assert len(pd.read_csv(killed / "models/plots/train_loss.csv")) == TINY_PROJECT["train"]["steps"]
    log = (whole / "repro.log").read_text()
    assert "torch.distributed.run --standalone --nproc_per_node 2 -m stages.train" in log


@pytest.mark.slow
def test_an_error_in_a_worker_ends_as_its_message_and_code(tiny_upstream: Path, tmp_path: Path) -> None:
    root = project_copy(tiny_upstream, tmp_path / "broken")
    index = root / "data/latents/latents_index.parquet"
    pd.read_parquet(index).iloc[:1].to_parquet(index)  # train pairs without their latents
    result = subprocess.run([sys.executable, "-m", "stages.train"], cwd=root, env=project_env(root),
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 1, result.stderr[-3000:]
    assert re.search(r"art2mus: train: \d+ pair\(s\) lack cached features or latents", result.stderr), result.stderr
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
