"""The stages as library functions: DVC's entries, the CLI's `train` and `generate` call the library."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from typer.testing import CliRunner

from art2mus.cli.main import app
from art2mus.config import PARAMS_FILE, Params
from art2mus.errors import Art2MusError
from art2mus.tracking import stage_run

ROOT = Path(__file__).resolve().parents[2]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_each_stage_entry_calls_its_library_run_and_dvc_tracks_it(name: str, monkeypatch) -> None:
    entry = importlib.import_module(f"stages.{name}")
    calls = []
    monkeypatch.setattr(entry, "run", lambda *args, **kwargs: calls.append((args, kwargs)))
    entry.main()
    assert calls == [((PARAMS_FILE, stage_run), {})]
    assert importlib.import_module(f"art2mus.stages.{name}").run.__module__ == f"art2mus.stages.{name}"
    assert STAGES[name]["cmd"] == f"python -m stages.{name}"
    assert f"art2mus/stages/{name}.py" in STAGES[name]["deps"]


def test_train_honours_params_and_resume_without_touching_sys_path(tmp_path: Path, monkeypatch) -> None:
    import art2mus.stages.train as train_stage

    calls = []
    monkeypatch.setattr(train_stage, "run", lambda *args, **kwargs: calls.append((args, kwargs)))
    path_before = list(sys.path)
    params_file = tmp_path / "other.yaml"
    result = CliRunner().invoke(app, ["train", "--params", str(params_file), "--no-resume"])
    assert result.exit_code == 0, result.output
    assert calls == [((params_file, stage_run), {"resume": False})]
    assert sys.path == path_before


def test_train_workers_read_the_launchers_params_file_and_resume(tmp_path: Path, monkeypatch) -> None:
    import art2mus.stages.train as train_stage

    seen: dict = {}

    def relaunch(processes: int) -> int:
        seen["launch"] = (processes, os.environ[train_stage.PARAMS_FILE_ENV], os.environ[train_stage.RESUME_ENV])
        return 0

    monkeypatch.setattr(train_stage, "launched_child", lambda: False)
    monkeypatch.setattr(train_stage, "requested_processes", lambda config: 2)
    monkeypatch.setattr(train_stage, "relaunch_under_torchrun", relaunch)
    monkeypatch.setattr(train_stage, "load_params", lambda path: Params())
    train_stage.run(tmp_path / "other.yaml", stage_run, resume=False)
    assert seen["launch"] == (2, str((tmp_path / "other.yaml").resolve()), "0")
    assert train_stage.PARAMS_FILE_ENV not in os.environ and train_stage.RESUME_ENV not in os.environ

    def load_params(path):
        seen["worker"] = path
        raise Art2MusError("stop before training")

    monkeypatch.setattr(train_stage, "launched_child", lambda: True)
    monkeypatch.setattr(train_stage, "die_with_launcher", lambda: None)
    monkeypatch.setattr(train_stage, "load_params", load_params)
    monkeypatch.setenv(train_stage.PARAMS_FILE_ENV, "/launcher/params.yaml")
    with pytest.raises(Art2MusError, match="stop before training"):
        train_stage.run(PARAMS_FILE, stage_run)
    assert seen["worker"] == "/launcher/params.yaml"


def test_generate_takes_its_defaults_from_generation_config(tmp_path: Path, monkeypatch) -> None:
    import art2mus.generation
    from art2mus.models.pipeline import GenerationConfig

    configs = []

    def generate_files(images, out, model, config):
        configs.append(config)
        return SimpleNamespace(written=[], failed=[])

    monkeypatch.setattr(art2mus.generation, "generate_files", generate_files)
    image = tmp_path / "a.png"
    assert CliRunner().invoke(app, ["generate", str(image), "-o", str(tmp_path / "out")]).exit_code == 0
    assert CliRunner().invoke(app, ["generate", str(image), "-o", str(tmp_path / "out"), "--steps", "7",
                                    "--scheduler", "ddim", "--seed", "3"]).exit_code == 0
    assert configs == [GenerationConfig(), GenerationConfig(steps=7, scheduler="ddim", seed=3)]
