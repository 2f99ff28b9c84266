"""Licences: classification of licence strings, the parts table, the summary of a project's data, the policy."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from art2mus.config import Params
from art2mus.data.sample import FMA_LICENSES
from art2mus.errors import Art2MusError
from art2mus.tracking.licences import (
    COMMERCIAL,
    NONCOMMERCIAL,
    UNKNOWN,
    LicenceBlocked,
    LicenceSummary,
    check_licences,
    classify_licence,
    part_licences,
    policy_blockers,
    summarise_licences,
    version_licences,
)


@pytest.mark.parametrize(("name", "use"), [
    ("Attribution-Noncommercial-Share Alike 3.0 United States", NONCOMMERCIAL),
    ("Attribution-NonCommercial-NoDerivatives (aka Music Sharing) 3.0 International", NONCOMMERCIAL),
    ("Creative Commons Attribution-NonCommercial-NoDerivatives 4.0", NONCOMMERCIAL),
    ("cc-by-nc-sa-4.0", NONCOMMERCIAL),
    ("CC BY-NC 4.0", NONCOMMERCIAL),
    ("Attribution 4.0 International", COMMERCIAL),
    ("Attribution-ShareAlike", COMMERCIAL),
    ("Attribution-NoDerivatives 4.0 International", COMMERCIAL),
    ("Public Domain Mark 1.0", COMMERCIAL),
    ("CC0 1.0 Universal", COMMERCIAL),
    ("Free Art License", COMMERCIAL),
    ("MIT", COMMERCIAL),
    ("Apache-2.0", COMMERCIAL),
    ("FMA-Limited: Download Only", UNKNOWN),
    ("All rights reserved", UNKNOWN),
    ("", UNKNOWN),
    (None, UNKNOWN),
])
def test_licences_are_classified_by_what_they_allow(name: str | None, use: str) -> None:
    assert classify_licence(name).use == use


def test_no_derivatives_is_flagged_and_every_sample_licence_is_recognised() -> None:
    assert "no-derivatives" in classify_licence("Attribution-NoDerivatives 4.0 International").why
    assert all(classify_licence(name).use != UNKNOWN for name in FMA_LICENSES)


def parts(**overrides) -> dict[str, tuple[str, str]]:
    params = Params.model_validate(overrides)
    return {part.part: (part.code.use, part.weights.use) for part in part_licences(params)}


def test_parts_come_from_the_table_in_code() -> None:
    assert parts() == {"image encoder": (COMMERCIAL, COMMERCIAL), "backbone": (COMMERCIAL, COMMERCIAL)}
    real = part_licences(Params.model_validate({"backbone": {"profile": "audioldm2"},
                                                "features": {"image_encoder": {"name": "imagebind"}}}))
    encoder, backbone = real
    assert (encoder.code.name, encoder.weights.name) == ("CC BY-NC-SA 4.0", "CC BY-NC 4.0")
    assert backbone.weights.name == "CC BY-NC-SA 4.0" and backbone.weights.use == NONCOMMERCIAL
    assert parts(features={"image_encoder": {"name": "clip"}})["image encoder"] == (COMMERCIAL, COMMERCIAL)
    unknown = part_licences(Params.model_validate({"backbone": {"profile": "audioldm2", "source": "me/my-prior"}}))[1]
    assert unknown.weights.use == UNKNOWN and "not in art2mus's licence table" in unknown.weights.why


def write_project(root: Path, licences: list[str], artwork_licences: list[str] | None = None,
                  sample: bool = True) -> Params:
    """A project with a splits table and an artworks manifest; the data under the sample folder or not."""
    n = len(licences)
    (root / "data/processed").mkdir(parents=True)
    (root / "data/interim").mkdir(parents=True)
    splits = pd.DataFrame({"artwork_id": [f"a{i}.jpg" for i in range(n + 2)], "track_id": range(n + 2),
                           "artist": "x", "style": "s", "genre": "g", "track_genre_top": "Rock",
                           "license": [*licences, "CC0 1.0 Universal", "CC0 1.0 Universal"],
                           "split": ["train"] * n + ["test"] * 2})
    splits.to_parquet(root / "data/processed/splits.parquet")
    artworks = pd.DataFrame({"artwork_id": splits["artwork_id"]})
    if artwork_licences is not None:
        artworks["license"] = [*artwork_licences, "x", "x"]
    artworks.to_parquet(root / "data/interim/artworks.parquet")
    data = "data/sample" if sample else "data/raw"
    return Params.model_validate({"ingest": {"artgraph_dir": f"{data}/artgraph", "fma_dir": f"{data}/fma"}})


def test_the_summary_counts_the_train_splits_licences(tmp_path: Path) -> None:
    params = write_project(tmp_path, ["Attribution 4.0 International"] * 3 + ["CC BY-NC 4.0"] * 2)
    summary = summarise_licences(params, tmp_path)
    assert [(row.licence.name, row.count) for row in summary.tracks] == [
        ("Attribution 4.0 International", 3), ("CC BY-NC 4.0", 2)]  # the test split's CC0 tracks left out
    assert [(row.licence.use, row.count) for row in summary.artworks] == [(COMMERCIAL, 5)]  # painted by art2mus
    assert summary.notes and "synthesised by art2mus" in summary.notes[0]
    assert policy_blockers(summary, "research") == []
    [blocker] = policy_blockers(summary, "commercial")
    assert "'CC BY-NC 4.0': 2 tracks (non-commercial)" in blocker


def test_artwork_licences_come_from_the_export_or_are_unknown(tmp_path: Path) -> None:
    params = write_project(tmp_path / "a", ["CC0 1.0 Universal"] * 2, ["Public Domain Mark 1.0", "Copyrighted"],
                           sample=False)
    summary = summarise_licences(params, tmp_path / "a")
    assert {row.licence.name: row.licence.use for row in summary.artworks} == {
        "Public Domain Mark 1.0": COMMERCIAL, "Copyrighted": UNKNOWN}
    params = write_project(tmp_path / "b", ["CC0 1.0 Universal"] * 2, sample=False)
    [row] = summarise_licences(params, tmp_path / "b").artworks
    assert row.licence.use == UNKNOWN and row.count == 2 and "has no licence column" in row.licence.why
    assert policy_blockers(summarise_licences(params, tmp_path / "b"), "commercial")


def test_a_blocked_promotion_names_each_licence_and_its_count(tmp_path: Path) -> None:
    params = write_project(tmp_path, ["Attribution-NonCommercial 3.0 International"] * 4 + ["Mystery licence"])
    params = params.model_copy(update={"backbone": params.backbone.model_copy(update={"profile": "audioldm2"})})
    summary = LicenceSummary.from_dict(json.loads(json.dumps(summarise_licences(params, tmp_path).to_dict())))
    check_licences(summary, "research", "3")  # research: allowed
    with pytest.raises(LicenceBlocked) as blocked:
        check_licences(summary, "commercial", "3")
    message = str(blocked.value)
    assert "version 3 may not be promoted for commercial use" in message and "promotion.intended_use" in message
    assert "'Attribution-NonCommercial 3.0 International': 4 tracks (non-commercial)" in message
    assert "'Mystery licence': 1 track (unknown" in message
    assert "backbone audioldm2:cvssp/audioldm2-music weights: 'CC BY-NC-SA 4.0'" in message


def test_a_version_without_a_licence_record_is_not_cleared_for_commercial_use() -> None:
    assert version_licences({}) is None
    assert policy_blockers(None, "research") == []
    with pytest.raises(LicenceBlocked, match="no licence record"):
        check_licences(None, "commercial", "1")
    with pytest.raises(Art2MusError, match="not a licence summary"):
        version_licences({"licences": "{\"tracks\": 1}"})


def test_art2mus_promote_refuses_what_the_policy_forbids_even_with_force(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient
    from typer.testing import CliRunner

    from art2mus.cli.main import app
    from art2mus.tracking.registry import MODEL_NAME

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("art2mus", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(experiment)
    client.create_registered_model(MODEL_NAME)
    summary = summarise_licences(write_project(tmp_path, ["CC BY-NC 4.0"] * 3 + ["CC0 1.0 Universal"]), tmp_path)
    client.create_model_version(MODEL_NAME, f"{run.info.artifact_uri}/art2mus", run_id=run.info.run_id,
                                tags={"licences": json.dumps(summary.to_dict())})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("promotion: {intended_use: commercial}\n")
    result = CliRunner().invoke(app, ["promote", "1", "--force", "--quiet"])
    assert result.exit_code == 1
    assert "version 1 may not be promoted for commercial use" in result.output
    assert "'CC BY-NC 4.0': 3 tracks (non-commercial)" in result.output and "CC0" not in result.output
    assert client.get_registered_model(MODEL_NAME).aliases == {}
