"""Model cards: the Markdown from synthetic inputs, and writing it once per version on a real MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from art2mus.config import PINNED_REVISION, Params
from art2mus.tracking.licences import (
    Licence,
    LicenceCount,
    LicenceSummary,
    part_licences,
)
from art2mus.tracking.modelcard import (
    CARD_FILE,
    CARD_TAG,
    EVALUATION_FILE,
    CardInputs,
    document_version,
    model_card_markdown,
)
from art2mus.tracking.registry import MODEL_NAME

SECTIONS = ["## Model", "## Intended use", "## Training data", "### Track licences", "### Artwork licences",
            "### Parts", "## Training parameters", "## Evaluation", "## Limitations", "## Lineage"]


def interval(value: float, low: float, high: float) -> dict[str, float]:
    return {"value": value, "low": low, "high": high}


def evaluate_metrics(weights: str) -> dict:
    """The layout of reports/evaluate/metrics.json (correspondence per conditioning, generation per generating one)."""
    def correspondence(top1: float) -> dict:
        return {"retrieval_top1": interval(top1, top1 - 0.1, top1 + 0.1), "gap": interval(0.01, 0.005, 0.015),
                "chance_top1": 0.125}

    def generation(fad: float) -> dict:
        return {"fad_spectral": {**interval(fad, fad - 2, fad + 2), "valid": True, "reason": ""},
                "imagebind_score": {"mm": interval(0.9, 0.85, 0.95)}}

    return {"split": "test", "items": 64, "k": 8, "draws": 16, "model": {"weights_sha256": weights},
            "correspondence": {"trained": correspondence(0.625), "mean": correspondence(0.125),
                               "untrained": correspondence(0.13), "oracle": correspondence(0.875)},
            "generation": {"trained": {**generation(30.0), "planted": {"register": {
                "accuracy": interval(0.7, 0.6, 0.8), "chance": 0.25}}}, "mean": generation(50.0),
                "untrained": generation(52.0)}}


def licence_summary(params: Params) -> LicenceSummary:
    return LicenceSummary(
        tracks=[LicenceCount(Licence("Attribution-NonCommercial 3.0 International", "noncommercial", "NC"), 40),
                LicenceCount(Licence("CC0 1.0 Universal", "commercial", "public domain dedication"), 8)],
        artworks=[LicenceCount(Licence("art2mus sample (procedurally painted by art2mus)", "commercial", "ours"), 48)],
        parts=part_licences(params), notes=["embedded sample"])


def card_inputs(params: Params, metrics: dict | None = None) -> CardInputs:
    tags = {"identity": "id123", "weights_sha256": "ab" * 32, "image_encoder_id": "tiny:c5fa", "prior": "fb" * 32,
            "train_run_id": "trainrun", "git.commit": "c0ffee", "git.dirty": "true", "code_version": "c0ffee+dirty.1",
            "params": json.dumps(params.model_dump(mode="json")),
            "training_data_hashes": json.dumps({"data/processed/splits.parquet": "5plits", "models/prior": "pr10r.dir"})}
    return CardInputs(version="7", tags=tags, run_id="registerrun", licences=licence_summary(params),
                      intended_use=params.promotion.intended_use, metrics=metrics,
                      metrics_note="reports/evaluate/metrics.json is missing",
                      gates={"validate_raw": {"success": True, "statistics": {"evaluated_expectations": 51,
                                                                               "successful_expectations": 51}},
                             "validate_splits": None},
                      training={"pairs": 48, "artworks": 48, "tracks": 48, "artists": 30}, sample=True)


def test_the_card_has_every_section_with_licences_metrics_limitations_and_lineage() -> None:
    card = model_card_markdown(card_inputs(Params(), evaluate_metrics("ab" * 32)))
    positions = [card.index(section) for section in SECTIONS]
    assert positions == sorted(positions) and card.startswith("# Model card: art2mus version 7")
    assert "| Attribution-NonCommercial 3.0 International | noncommercial | 40 | NC |" in card
    assert "Policy (params.yaml `promotion.intended_use`): **research**" in card
    assert "Commercial use: **not allowed**" in card and "40 tracks" in card
    assert "| this model (trained aligner) | 0.625 [0.525, 0.725] | 0.01 [0.005, 0.015] | 30.00 [28.00, 32.00]" in card
    assert "| oracle (the prior's own audio encoder: the ceiling) | 0.875 [0.775, 0.975] | 0.01 [" in card
    assert "n/a (no generation)" in card  # the oracle generates nothing
    assert "| register | 0.700 [0.600, 0.800] | 0.250 |" in card
    assert f"| train.steps | {Params().train.steps} |" in card and "| backbone.profile | \"tiny\" |" in card
    assert "below text-conditioned systems" in card and "Griffin-Lim" in card and "not the paper's model" in card
    assert "`c0ffee` (work tree dirty)" in card and "| data/processed/splits.parquet | `5plits` |" in card
    assert "gate validate_raw: passed (51 of 51 expectations)" in card and "gate validate_splits: no report" in card


def test_the_real_backbones_card_has_no_tiny_profile_limits_and_says_why_metrics_are_missing() -> None:
    params = Params.model_validate({"backbone": {"profile": "audioldm2"}})
    card = model_card_markdown(card_inputs(params))
    assert "Griffin-Lim" not in card and "not the paper's model" not in card
    assert f"cvssp/audioldm2-music@{PINNED_REVISION}" in card and "CC BY-NC-SA 4.0 (noncommercial)" in card
    assert "No evaluation of these weights: reports/evaluate/metrics.json is missing" in card


def write_project(root: Path, weights: str) -> Params:
    """A project's files a card reads: splits, artworks, the evaluation, the gate reports."""
    params = Params()
    (root / "data/processed").mkdir(parents=True)
    (root / "data/interim").mkdir(parents=True)
    (root / "data/reports").mkdir(parents=True)
    n = 12
    pd.DataFrame({"artwork_id": [f"a{i}.jpg" for i in range(n)], "track_id": range(n), "artist": [f"p{i % 5}" for i in range(n)],
                  "license": ["CC BY-NC 4.0"] * n, "split": ["train"] * 8 + ["test"] * 4}
                 ).to_parquet(root / "data/processed/splits.parquet")
    pd.DataFrame({"artwork_id": [f"a{i}.jpg" for i in range(n)]}).to_parquet(root / "data/interim/artworks.parquet")
    (root / "reports/evaluate").mkdir(parents=True)
    (root / "reports/evaluate/metrics.json").write_text(json.dumps(evaluate_metrics(weights)))
    for gate in ("validate_raw", "validate_splits"):
        (root / f"data/reports/{gate}.json").write_text(json.dumps(
            {"success": True, "statistics": {"evaluated_expectations": 3, "successful_expectations": 3}}))
    return params


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> MlflowClient:
    """A store with two registered versions (one per test), each with its run and train run (no model logged)."""
    root = tmp_path_factory.mktemp("store")
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    experiment = client.create_experiment("art2mus", artifact_location=(root / "artifacts").as_uri())
    client.create_registered_model(MODEL_NAME)
    params = json.dumps(Params().model_dump(mode="json"))
    for _ in range(2):
        train_run = client.create_run(experiment).info.run_id
        run = client.create_run(experiment)
        client.create_model_version(MODEL_NAME, f"{run.info.artifact_uri}/art2mus", run_id=run.info.run_id, tags={
            "weights_sha256": "cd" * 32, "train_run_id": train_run, "params": params,
            "training_data_hashes": json.dumps({"data/processed/splits.parquet": "5plits"})})
    return client


def artifact_text(client: MlflowClient, run_id: str, path: str, tmp: Path) -> str:
    return Path(client.download_artifacts(run_id, path, str(tmp))).read_text()


def test_a_version_gets_one_card_with_its_licences_and_evaluation(tmp_path: Path, store: MlflowClient) -> None:
    client, version = store, "1"
    params = write_project(tmp_path / "project", "cd" * 32)
    assert document_version(tmp_path / "project", version, params, client)
    model_version = client.get_model_version(MODEL_NAME, version)
    assert model_version.tags[CARD_TAG] == CARD_FILE
    licences = json.loads(model_version.tags["licences"])
    assert licences["commercial_use"] is False
    assert [(row["licence"]["name"], row["count"]) for row in licences["tracks"]] == [("CC BY-NC 4.0", 8)]
    card = artifact_text(client, model_version.run_id, CARD_FILE, tmp_path / "a")
    assert "version 1" in card and "| CC BY-NC 4.0 | noncommercial | 8 |" in card and "0.625 [0.525, 0.725]" in card
    assert json.loads(artifact_text(client, model_version.run_id, EVALUATION_FILE, tmp_path / "b"))["items"] == 64
    train_run = model_version.tags["train_run_id"]
    assert json.loads(artifact_text(client, train_run, "licences.json", tmp_path / "c")) == licences
    # Nothing changed: no second card (even when the project's files have moved on).
    (tmp_path / "project/reports/evaluate/metrics.json").unlink()
    assert not document_version(tmp_path / "project", version, params, client)
    assert "0.625 [0.525, 0.725]" in artifact_text(client, model_version.run_id, CARD_FILE, tmp_path / "d")


def test_metrics_of_other_weights_are_not_put_on_a_card(tmp_path: Path, store: MlflowClient) -> None:
    client, version = store, "2"
    params = write_project(tmp_path / "project", "ef" * 32)
    document_version(tmp_path / "project", version, params, client)
    run_id = client.get_model_version(MODEL_NAME, version).run_id
    card = artifact_text(client, run_id, CARD_FILE, tmp_path / "a")
    assert "No evaluation of these weights" in card and "evaluates weights efefefefefef, not cdcdcdcdcdcd" in card
    assert EVALUATION_FILE not in {item.path for item in client.list_artifacts(run_id, "evaluation")}
