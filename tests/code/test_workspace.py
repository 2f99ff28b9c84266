"""The workspace contract: its records round-trip, read what older writers left, and import light."""

import json
import subprocess
import sys
from pathlib import Path

from art2mus.workspace import DATA_HASHES_TAG, INPUTS_TAG, TRAINING_DATA_TAG, TrainRecord, VersionTags, json_tag


def test_train_record_round_trips_atomically(tmp_path: Path) -> None:
    record = TrainRecord(mlflow_run_id="abc", weights_sha256="f" * 64, prior="p", backbone={"profile": "tiny"},
                         image_encoder_id="tiny:1", train_pairs=12, steps=3, final_loss=0.5, seconds=1.5,
                         resumed_from=2, world_size=1, mixed_precision="no", gradient_checkpointing=False)
    path = tmp_path / "models" / "train_record.json"
    path.parent.mkdir()
    record.write(path)
    assert TrainRecord.read(path) == record
    assert json.loads(path.read_text())["weights_sha256"] == "f" * 64  # the JSON keys are the fields
    assert not list(path.parent.glob(".*"))  # nothing left of the atomic write


def test_train_record_reads_older_and_partial_records() -> None:
    record = TrainRecord.from_dict({"mlflow_run_id": "r", "weights_sha256": "w", "resumed_from": None,
                                    "something_new": 1})
    assert (record.mlflow_run_id, record.weights_sha256, record.prior, record.resumed_from) == ("r", "w", "", None)
    assert TrainRecord.from_dict(record) is record


def test_version_tags_round_trip_and_name_each_tag_once() -> None:
    tags = VersionTags(identity="id", validation_status="pending", weights_sha256="w", backbone={"profile": "tiny"},
                       git_dirty=True, data_hashes={"a": "1"}, training_inputs={"b": "2"}).to_tags()
    assert tags["git.dirty"] == "true" and json.loads(tags[DATA_HASHES_TAG]) == {"a": "1"}
    assert VersionTags.from_tags(tags).to_tags() == tags
    assert set(VersionTags().to_tags(only=("gates",))) == {"gates"}


def test_version_tags_tolerate_missing_and_unreadable_tags() -> None:
    tags = VersionTags.from_tags({"params": "{not json", "train_run_id": "t"})
    assert tags.params == {} and tags.train_run_id == "t" and tags.weights_sha256 == ""
    assert VersionTags.from_tags({TRAINING_DATA_TAG: '{"x": "1"}'}).recorded_inputs() == ({"x": "1"}, TRAINING_DATA_TAG)
    assert VersionTags.from_tags({INPUTS_TAG: '{"y": "2"}', DATA_HASHES_TAG: '{"z": "3"}'}).recorded_inputs() == (
        {"y": "2"}, INPUTS_TAG)
    assert VersionTags.from_tags({}).recorded_inputs() == ({}, "")


def test_json_tag_has_one_behaviour() -> None:
    assert json_tag({}, "k") == {} and json_tag({"k": ""}, "k") == {} and json_tag({"k": "{bad"}, "k") == {}
    assert json_tag({"k": "[1]"}, "k") == [1] and json_tag({}, "k", []) == []


def test_workspace_imports_without_torch_or_mlflow() -> None:
    code = ("import sys, art2mus.workspace; "
            "assert not {'torch', 'mlflow', 'diffusers'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)
