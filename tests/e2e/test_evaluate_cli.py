"""`art2mus evaluate --model`: any model, on a split of the project, on the same ground as the stage."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from art2mus.config import load_params
from art2mus.evaluation.evaluate import GENERATED_DIR, METRICS_FILE, PER_ITEM_FILE, decision_scores, load_split
from art2mus.models.pipeline import Art2MusPipeline
from tests.helpers import BIN, run

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("pipeline")]  # SHARED_GROUP: first, to start the build
SMALL = {"max_items": 12, "draws": 2, "untrained_seeds": [1], "steps": 4, "fad_resamples": 10, "report_items": 2,
         "planted_tracks": 24}


def test_evaluate_any_model_on_demand(pipeline_repo: Path, tmp_path: Path) -> None:
    params = yaml.safe_load((pipeline_repo / "params.yaml").read_text())
    params["evaluate"].update(SMALL, split="val")
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    out = tmp_path / "evaluation"
    result = run([str(BIN / "art2mus"), "evaluate", "--model", "models/art2mus", "--params", str(params_file),
                  "--out", str(out), "--quiet"], pipeline_repo)
    assert "retrieval top-1" in result.stdout and f"evaluation report: {out}" in result.stdout
    per_item = pd.read_parquet(out / PER_ITEM_FILE)
    assert len(per_item) == 12 and len(list((out / GENERATED_DIR).glob("*.wav"))) == 12
    assert '"split": "val"' in (out / METRICS_FILE).read_text()
    # The same items, candidates and draws give the same per-item scores, however the model is scored.
    loaded = load_params(params_file)
    pipeline = Art2MusPipeline.from_pretrained(pipeline_repo / "models/art2mus")
    again = decision_scores(pipeline, load_split(loaded, "val", pipeline_repo), loaded)
    pd.testing.assert_frame_equal(per_item, again, check_exact=False, rtol=1e-6)


def test_evaluate_names_a_missing_model(pipeline_repo: Path, tmp_path: Path) -> None:
    result = run([str(BIN / "art2mus"), "evaluate", "--model", str(tmp_path / "nothing"), "--quiet"], pipeline_repo,
                 check=False)
    assert result.returncode == 1 and "nothing" in result.stderr and "Traceback" not in result.stderr
