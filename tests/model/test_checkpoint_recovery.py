"""A checkpoint that cannot be read (truncated state or weights) is set aside under a new name, named
in the log, and training resumes from the newest readable one (or starts fresh) to the weights of an
uninterrupted run; through the real stage too, whose outputs DVC has already removed."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path

import pytest

from art2mus.config import AudioParams, BackboneParams, TrainParams
from art2mus.models.aligner import state_dict_sha256
from art2mus.models.tiny import build_tiny_backbone
from art2mus.training.aligner import CHECKPOINTS_DIR, STATE_FILE, AlignerData, train_aligner
from tests.helpers import BIN, project_env
from tests.tiny_model import TINY_UPSTREAM_GROUP

pytestmark = pytest.mark.xdist_group(TINY_UPSTREAM_GROUP)

WEIGHTS_FILE = Path("aligner/diffusion_pytorch_model.safetensors")
# A checkpoint after every step, the last two kept: step-0000005 and step-0000006 at the end.
PARAMS = TrainParams(steps=6, batch_size=8, lr=5e-3, warmup_steps=2, checkpoint_every=1, keep_checkpoints=2,
                     tokens=2, hidden_dim=16, threads=1)


@pytest.fixture(scope="module")
def backbone():
    return build_tiny_backbone(BackboneParams(), AudioParams(), seed=0).eval()


@pytest.fixture(scope="module")
def data(backbone) -> AlignerData:
    import torch

    generator = torch.Generator().manual_seed(0)
    return AlignerData(torch.randn(32, 8, generator=generator),
                       torch.randn(32, *backbone.latent_shape, generator=generator))


@pytest.fixture(scope="module")
def uninterrupted(backbone, data, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The weights' hash of a run that was never interrupted."""
    result = train_aligner(data, backbone, PARAMS, tmp_path_factory.mktemp("whole"), quiet=True, fingerprint="f")
    return state_dict_sha256(result.aligner)


def truncate(path: Path) -> None:
    """Keep the first half of the file, as a disk full or a kill mid-copy would."""
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])


def checkpoint_names(out: Path) -> list[str]:
    return sorted(path.name for path in (out / CHECKPOINTS_DIR).iterdir())


@pytest.mark.parametrize("damaged", [Path(STATE_FILE), WEIGHTS_FILE], ids=["state", "weights"])
def test_an_unreadable_latest_checkpoint_is_set_aside_and_the_previous_one_resumed_exactly(
    backbone, data, uninterrupted: str, damaged: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    train_aligner(data, backbone, PARAMS, tmp_path, quiet=True, fingerprint="f")
    assert checkpoint_names(tmp_path) == ["step-0000005", "step-0000006"]
    truncate(tmp_path / CHECKPOINTS_DIR / "step-0000006" / damaged)

    with caplog.at_level(logging.INFO, logger="art2mus.training.aligner"):
        resumed = train_aligner(data, backbone, PARAMS, tmp_path, resume=True, quiet=True, fingerprint="f")
    assert resumed.resumed_from == 5
    assert state_dict_sha256(resumed.aligner) == uninterrupted
    # Set aside, not deleted; neither pruned nor counted among the checkpoints kept.
    aside = tmp_path / CHECKPOINTS_DIR / "corrupt-step-0000006"
    assert checkpoint_names(tmp_path) == ["corrupt-step-0000006", "step-0000005", "step-0000006"]
    assert (aside / damaged).stat().st_size < (tmp_path / CHECKPOINTS_DIR / "step-0000006" / damaged).stat().st_size
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert any(str(aside) in message and damaged.name in message for message in warnings), warnings

    # The same damage again: the new copy is set aside beside the first, under a name of its own.
    truncate(tmp_path / CHECKPOINTS_DIR / "step-0000006" / damaged)
    again = train_aligner(data, backbone, PARAMS, tmp_path, resume=True, quiet=True, fingerprint="f")
    assert again.resumed_from == 5
    assert state_dict_sha256(again.aligner) == uninterrupted
    assert checkpoint_names(tmp_path) == ["corrupt-step-0000006", "corrupt-step-0000006-1", "step-0000005",
                                          "step-0000006"]


def test_when_no_checkpoint_can_be_read_training_starts_fresh_and_keeps_them_aside(
    backbone, data, uninterrupted: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    train_aligner(data, backbone, PARAMS, tmp_path, quiet=True, fingerprint="f")
    truncate(tmp_path / CHECKPOINTS_DIR / "step-0000006" / STATE_FILE)
    truncate(tmp_path / CHECKPOINTS_DIR / "step-0000005" / WEIGHTS_FILE)

    with caplog.at_level(logging.INFO, logger="art2mus.training.aligner"):
        result = train_aligner(data, backbone, PARAMS, tmp_path, resume=True, quiet=True, fingerprint="f")
    assert result.resumed_from == 0
    assert state_dict_sha256(result.aligner) == uninterrupted
    assert checkpoint_names(tmp_path) == ["corrupt-step-0000005", "corrupt-step-0000006", "step-0000005",
                                          "step-0000006"]
    messages = [record.getMessage() for record in caplog.records]
    assert sum("corrupt-step-" in message for message in messages) == 2, messages
    assert any("starting fresh" in message for message in messages), messages


TIMEOUT = 600


def repro(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "dvc"), "repro", *args], cwd=root, env=project_env(root),
                          capture_output=True, text=True, timeout=TIMEOUT)


@pytest.mark.slow
def test_dvc_repro_train_recovers_from_a_truncated_latest_checkpoint_without_a_traceback(
    tiny_upstream: Path, tmp_path: Path
) -> None:
    root = tmp_path / "project"
    shutil.copytree(tiny_upstream, root, symlinks=True)
    first = repro(root, "train")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    record = root / "models/train_record.json"
    whole = json.loads(record.read_text())
    checkpoints = root / "models/aligner" / CHECKPOINTS_DIR
    assert sorted(path.name for path in checkpoints.iterdir()) == ["step-0000008", "step-0000012"]
    truncate(checkpoints / "step-0000012" / STATE_FILE)

    # DVC removes the stage's outputs (all but the persistent checkpoints) before the stage runs.
    again = repro(root, "--force", "--single-item", "train")
    output = again.stdout + again.stderr
    assert again.returncode == 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert str(Path("models/aligner") / CHECKPOINTS_DIR / "corrupt-step-0000012") in output, output[-3000:]
    resumed = json.loads(record.read_text())
    assert resumed["resumed_from"] == 8
    assert resumed["weights_sha256"] == whole["weights_sha256"]
    assert (root / "models/art2mus").is_dir()
    assert sorted(path.name for path in checkpoints.iterdir()) == ["corrupt-step-0000012", "step-0000008",
                                                                   "step-0000012"]
