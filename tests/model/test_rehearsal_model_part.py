"""The rehearsal's model part at tiny size: every section of the report, sane figures, and a light import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from art2mus.rehearsal import model_part

pytestmark = pytest.mark.slow  # ~1 min of CPU on the tiny stack


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("rehearsal")
    returned = model_part.main(["--size", "tiny", "--quick", "--device", "cpu", "--out", str(out)])
    written = json.loads((out / "rehearsal.json").read_text())
    assert (out / "rehearsal.md").read_text().startswith("# Rehearsal, model part (tiny size, cpu)")
    assert not list(out.glob(".*.tmp")), "atomic writes leave no temporary files"
    assert written["errors"] == returned["errors"] == []
    return written


def test_parameters_and_stages(report: dict) -> None:
    counts = report["parameters"]
    for part in ("unet", "language_model", "vae", "vocoder", "text_encoder", "text_encoder_2", "projection_model",
                 "clip_vision", "imagebind", "imagebind_vision", "aligner"):
        assert counts[part] > 0, part
    assert report["meta"]["finished"] is True
    stages = report["stages"]
    assert len(stages) >= 8
    for stage in stages:
        assert stage["seconds"] >= 0 and stage["peak_bytes"] > 0


def test_training_steps(report: dict) -> None:
    steps = {(s["micro_batch"], s["gradient_checkpointing"]): s for s in report["training"]["steps"]}
    assert set(steps) == {(1, False), (2, False), (1, True), (2, True)}
    for step in steps.values():
        assert step["step_seconds"] > 0 and step["activation_bytes"] > 0 and step["aligner_grad_norm"] > 0
    for batch in (1, 2):
        assert steps[batch, True]["activation_bytes"] < steps[batch, False]["activation_bytes"]
    assert steps[2, False]["activation_bytes"] > steps[1, False]["activation_bytes"]
    optimizer = report["optimizer_step"]
    assert optimizer["accumulation"] == 2 and len(optimizer["losses"]) == 2 and optimizer["max_parameter_change"] > 0


def test_generation(report: dict) -> None:
    generation = report["generation"]
    assert generation["expected_samples"] == 163_840
    assert generation["generated_samples"] == 163_840 + generation["extra_samples"]
    assert generation["generated_samples"] == 163_872  # HiFi-GAN's hop-160 output of 1,024 frames, + 32
    assert generation["waveform_finite"]
    assert generation["seconds_per_unet_step"] > 0 and len(generation["unet_step_seconds"]) == generation["steps_measured"]
    extrapolated = generation["real_time_factor_extrapolated"]
    assert extrapolated["ddim_200_steps"] > extrapolated["dpmsolver_25_steps"] > 0


def test_batch_fit_and_plan(report: dict) -> None:
    fit = report["batch_fit"]
    assert fit["derived"] is True and "derived" in fit["method"]
    for capacity in ("24", "40", "80"):
        off = fit["fits"]["without_checkpointing"]["max_micro_batch"][capacity]
        on = fit["fits"]["with_checkpointing"]["max_micro_batch"][capacity]
        assert on >= off >= 1
        chosen = fit["plan"][capacity]["chosen"]
        assert chosen["micro_batch"] * chosen["accumulation"] == 16


def test_image_encoders(report: dict) -> None:
    imagebind = report["imagebind"]
    assert "missing" in imagebind or (imagebind["embedding_shape"][0] == 2 and imagebind["unit_norm"])
    assert report["clip_vision"]["embedding_shape"][0] == 2 and report["clip_vision"]["parameters"] > 0


def test_import_is_light() -> None:
    code = ("import sys, art2mus.rehearsal.model_part\n"
            "bad = [m for m in sys.modules if m == 'pydantic' or m.startswith('pydantic.') or m == 'art2mus.config'"
            " or (m.startswith('art2mus.') and not m.startswith('art2mus.rehearsal'))]\n"
            "print(','.join(bad))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"imported: {result.stdout.strip()}"
