"""`make rehearse-ci`: the real retrain flow on the real profile at FULL size (random weights from the real
configs, with the real checkpoints' quirks), served, plus ImageBind-huge embedding two artworks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from art2mus.rehearsal.flow import STAGES, rehearse

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600), pytest.mark.xdist_group("rehearsal")]  # one build, one worker


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory, module_tmp: Path) -> dict:
    out = tmp_path_factory.mktemp("rehearsal-ci")
    rehearse("ci", module_tmp / "work", out, ROOT)  # the full-size checkpoints (~5 GiB) go with the module
    assert json.loads((out / "rehearsal.json").read_text())["mode"] == "ci"
    assert "| train |" in (out / "rehearsal.md").read_text()
    return json.loads((out / "rehearsal.json").read_text())


def test_every_stage_and_the_flow_ran_on_the_real_profile(report: dict) -> None:
    assert [stage["name"] for stage in report["stages"]] == list(STAGES)
    assert all(stage["returncode"] == 0 and stage["seconds"] > 0 and stage["peak_rss_mib"] > 0
               for stage in report["stages"])
    assert report["overlay"]["backbone"]["profile"] == "audioldm2"
    assert report["overlay"]["train"]["grad_accum"] == 2
    assert report["flow"]["returncode"] == 0
    assert report["evaluation"]["caption_baseline"] == "present"
    assert set(report["evaluation"]["rows"]) == {"trained", "text_captions"}


def test_the_parts_are_full_size(report: dict) -> None:
    counts = report["parameters"]
    assert 346e6 < counts["unet"] < 348e6 and 124e6 < counts["language_model"] < 125e6
    assert 303e6 < counts["clip_vision"] < 305e6


def test_the_served_champion_answers_with_the_priors_length(report: dict) -> None:
    serving = report["serving"]
    assert serving["sample_rate"] == 16000 and serving["samples"] == 163840  # exactly 10.24 s


def test_imagebind_huge_embeds_the_artworks(report: dict) -> None:
    imagebind = report["imagebind"]
    assert imagebind["returncode"] == 0 and imagebind["images"] == 2 and imagebind["dim"] == 1024
    assert imagebind["unit_norm"]
