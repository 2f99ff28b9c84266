"""Data-parallel training: two CPU processes on gloo under torchrun stay in sync."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


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
