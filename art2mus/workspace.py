"""The workspace contract: where the stages, the flow and the registry find each other's outputs, and the
typed records they pass (the train record on disk, a registered version's tags in MLflow).

Light to import (no torch, no mlflow): the registry, gc and the CLI read it without loading a model.
Every path and tag name here is spelled once; readers and writers go through these records.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from art2mus.env import project_root
from art2mus.io import read_json, write_json_atomic

MODEL_DIR = Path("models/art2mus")  # the train stage's packaged model: aligner + prior + encoder spec
TRAIN_RECORD = Path("models/train_record.json")  # the train stage's run id and weights hash
MODEL_FILE = "model.json"  # the packaged model's metadata, inside MODEL_DIR
RETRAIN_LOCK = ".dvc/tmp/art2mus-retrain.lock"  # held by a retrain (and by gc); .dvc/tmp is DVC's ignored scratch
REGISTRY_LOCK = ".dvc/tmp/art2mus-registry.lock"  # held for seconds around each move of the champion alias
DEFAULT_DB = "mlflow.db"  # the project's own MLflow store, unless MLFLOW_TRACKING_URI names another
DEFAULT_ARTIFACTS = "mlartifacts"  # where the project's own store keeps its artifacts


def tracking_uri(root: Path | None = None) -> str:
    """`MLFLOW_TRACKING_URI` when set, else a SQLite file in the project."""
    explicit = os.environ.get("MLFLOW_TRACKING_URI")
    if explicit:
        return explicit
    root = root or project_root()
    return f"sqlite:///{(root / DEFAULT_DB).as_posix()}"


def json_tag(tags: Mapping[str, str], key: str, default: Any = None) -> Any:
    """A tag holding JSON, decoded; `default` ({} when None) when the tag is absent, empty or not JSON."""
    fallback = {} if default is None else default
    try:
        return json.loads(tags[key]) if tags.get(key) else fallback
    except json.JSONDecodeError:
        return fallback


@dataclass
class TrainRecord:
    """models/train_record.json: what the train stage made (so a flow knows its model when DVC skips train)."""

    mlflow_run_id: str = ""
    weights_sha256: str = ""  # sha256 of the aligner's state dict (art2mus.models.aligner.state_dict_sha256)
    prior: str = ""  # the prior's identity
    backbone: dict[str, Any] = field(default_factory=dict)
    image_encoder_id: str = ""
    train_pairs: int = 0
    steps: int = 0
    final_loss: float = float("nan")
    seconds: float = 0.0
    resumed_from: Any = None
    world_size: int = 1
    mixed_precision: str = ""
    gradient_checkpointing: bool = False

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | TrainRecord) -> TrainRecord:
        """From the JSON's keys (unknown ones ignored, missing ones defaulted: older records lack some)."""
        if isinstance(data, TrainRecord):
            return data
        known = {item.name for item in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known and value is not None})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def read(cls, path: str | Path) -> TrainRecord:
        return cls.from_dict(read_json(path))

    def write(self, path: str | Path) -> None:
        write_json_atomic(self.to_dict(), path)


# The version tags' names (VersionTags' fields map to these; a few are read by name elsewhere).
IDENTITY_TAG = "identity"
VALIDATION_TAG = "validation_status"
WEIGHTS_TAG = "weights_sha256"  # the aligner's state-dict hash, as the train record has it
TRAIN_RUN_TAG = "train_run_id"
DATA_HASHES_TAG = "data_hashes"  # every dvc.lock path -> md5
TRAINING_DATA_TAG = "training_data_hashes"  # the train stage's data deps -> md5
INPUTS_TAG = "training_inputs"  # DVC path -> md5 of every training input (and what is upstream of it)
GATES_TAG = "gates"
LIBRARIES_TAG = "libraries"
PARAMS_TAG = "params"
CARD_TAG = "model_card"  # the card's artifact path on the version's run
LICENCES_TAG = "licences"  # the licence summary as JSON
DECISION_PREFIX = "decision."
DECISION_REASONS_TAG = "decision.reasons"
DECISION_CHAMPION_TAG = "decision.champion"
DECISION_KEY_TAG = "decision.key"
PROMOTED_AT_TAG = "promoted_at"
ROLLED_BACK_AT_TAG = "rolled_back_at"

_TAG_NAMES = {"identity": IDENTITY_TAG, "validation_status": VALIDATION_TAG, "weights_sha256": WEIGHTS_TAG,
              "prior": "prior", "backbone": "backbone", "image_encoder": "image_encoder",
              "image_encoder_id": "image_encoder_id", "train_run_id": TRAIN_RUN_TAG, "git_commit": "git.commit",
              "git_dirty": "git.dirty", "code_version": "code_version", "data_hashes": DATA_HASHES_TAG,
              "training_data_hashes": TRAINING_DATA_TAG, "params": PARAMS_TAG, "training_inputs": INPUTS_TAG,
              "gates": GATES_TAG, "libraries": LIBRARIES_TAG}
_JSON_FIELDS = frozenset({"backbone", "image_encoder", "data_hashes", "training_data_hashes", "params",
                          "training_inputs", "gates", "libraries"})
LINEAGE_FIELDS = ("training_inputs", "gates", "libraries")  # what lineage adds to a version (lineage.lineage_tags)


@dataclass
class VersionTags:
    """A registered version's identity and lineage as MLflow tags (JSON for the mappings)."""

    identity: str = ""
    validation_status: str = ""
    weights_sha256: str = ""
    prior: str = ""
    backbone: dict[str, Any] = field(default_factory=dict)
    image_encoder: dict[str, Any] = field(default_factory=dict)
    image_encoder_id: str = ""
    train_run_id: str = ""
    git_commit: str = ""
    git_dirty: bool = False
    code_version: str = ""
    data_hashes: dict[str, str] = field(default_factory=dict)
    training_data_hashes: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    training_inputs: dict[str, str] = field(default_factory=dict)
    gates: dict[str, Any] = field(default_factory=dict)
    libraries: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def tag(name: str) -> str:
        """The MLflow tag name of the field `name`."""
        return _TAG_NAMES[name]

    def to_tags(self, only: tuple[str, ...] | None = None) -> dict[str, str]:
        """The tags (all fields, or those named in `only`), as registration sets them."""
        tags = {}
        for name in only or tuple(_TAG_NAMES):
            value = getattr(self, name)
            if name in _JSON_FIELDS:
                tags[_TAG_NAMES[name]] = json.dumps(value, sort_keys=True)
            elif isinstance(value, bool):
                tags[_TAG_NAMES[name]] = str(value).lower()
            else:
                tags[_TAG_NAMES[name]] = str(value)
        return tags

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> VersionTags:
        """From a version's tags; absent or unreadable ones take the field's default (older versions lack some)."""
        values: dict[str, Any] = {}
        for name, key in _TAG_NAMES.items():
            if name in _JSON_FIELDS:
                values[name] = json_tag(tags, key, {})
            elif name == "git_dirty":
                values[name] = tags.get(key) == "true"
            else:
                values[name] = tags.get(key, "")
        return cls(**values)

    def recorded_inputs(self) -> tuple[dict[str, str], str]:
        """The recorded training inputs and which tag they came from (older versions lack the closure)."""
        for name in ("training_inputs", "training_data_hashes", "data_hashes"):
            found = getattr(self, name)
            if found:
                return found, _TAG_NAMES[name]
        return {}, ""
