"""What a model version was made from, and that record on its train run.

- `Lineage` is the project's state when a model is registered: git commit (and the code diff's hash
  when the code differs from it), dvc.lock's data hashes, the validated params, the DVC md5 of every
  input the train stage read directly or through the stages before it (raw ArtGraph and FMA,
  manifests, pairs, splits, embeddings, latents, prior), the quality gates' verdicts and the library
  versions.
- The train run is logged in two steps: the `train` stage records what it knows (params, gate
  reports, the md5 of its inputs from the upstream stages' dvc.lock entries, which are final when
  `dvc repro` runs it) and registration, which runs once dvc.lock is final, completes it.

The registry (versions, aliases, history) builds on this module; the audit (trace, reverse lookup,
restore) builds on both.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from art2mus.config import load_params
from art2mus.data.schema import REPORTS_DIR
from art2mus.errors import Art2MusError
from art2mus.tracking.client import registry_client
from art2mus.tracking.dvclock import CODE_DIRS, data_hashes, training_data_hashes, training_inputs, upstream_inputs
from art2mus.tracking.runs import git_state
from art2mus.workspace import INPUTS_TAG, LINEAGE_FIELDS, TrainRecord, VersionTags

logger = logging.getLogger(__name__)

LINEAGE_ARTIFACTS = "lineage"  # the train run's artifact folder for params.yaml, gate reports, dvc.lock
COMPLETE_TAG = "lineage.complete"
LIBRARIES = ("torch", "diffusers", "transformers", "accelerate", "safetensors", "numpy", "pandas", "mlflow", "dvc",
             "great_expectations", "prefect", "pydantic")


@dataclass(frozen=True)
class Lineage:
    """Where a model came from: code, data and params."""

    git_commit: str = ""
    git_dirty: bool = False
    code_diff_sha256: str = ""  # of `git diff HEAD` over the code (CODE_DIRS) when it differs from the commit
    data: dict[str, str] = field(default_factory=dict)  # dvc.lock path -> md5
    params: dict[str, Any] = field(default_factory=dict)
    training_data: dict[str, str] = field(default_factory=dict)  # the train stage's data deps -> md5
    inputs: dict[str, str] = field(default_factory=dict)  # training_data and everything upstream of it -> md5
    gates: dict[str, dict[str, Any]] = field(default_factory=dict)  # GX gate -> verdict, counts, report md5
    libraries: dict[str, str] = field(default_factory=dict)  # package -> installed version

    @property
    def code_version(self) -> str:
        """The commit, qualified by the diff's hash when the code differs from it (params and data
        edits are not code: they reach the identity through the weights and the data hashes)."""
        if not self.git_commit:
            return "unknown"
        return f"{self.git_commit}+dirty.{self.code_diff_sha256[:16]}" if self.code_diff_sha256 else self.git_commit


# --- gates, libraries, the project's lineage now ----------------------------------------------------


def gate_reports(root: Path) -> list[Path]:
    folder = root / REPORTS_DIR
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def gate_results(root: Path) -> dict[str, dict[str, Any]]:
    """Each GX gate's verdict (from its report under data/reports) and the report's md5."""
    results = {}
    for path in gate_reports(root):
        raw = path.read_bytes()
        try:
            report = json.loads(raw)
        except json.JSONDecodeError as error:
            raise Art2MusError(f"{path}: not valid JSON: {error}") from None
        statistics = report.get("statistics") or {}
        results[path.stem] = {"success": bool(report.get("success")),
                              "evaluated": int(statistics.get("evaluated_expectations", 0)),
                              "unsuccessful": int(statistics.get("unsuccessful_expectations", 0)),
                              "md5": hashlib.md5(raw).hexdigest()}
    return results


def library_versions(packages: Iterable[str] = LIBRARIES) -> dict[str, str]:
    """Installed versions of the libraries that shape a model (missing ones left out)."""
    found = {}
    for package in packages:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


def collect_lineage(root: Path, params_file: str = "params.yaml") -> Lineage:
    """The project's lineage now: git state, dvc.lock data hashes, the validated params."""
    state = git_state(root)
    dirty = state.get("git.dirty") == "true"
    diff = ""
    if dirty:
        output = subprocess.run(["git", "diff", "HEAD", "--binary", "--", *CODE_DIRS], cwd=root, capture_output=True,
                                check=False).stdout
        diff = hashlib.sha256(output).hexdigest() if output else ""
    data = data_hashes(root / "dvc.lock")
    if not data:
        logger.warning("registry: %s has no data hashes; the model's identity rests on weights and code",
                       root / "dvc.lock")
    params = load_params(root / params_file).model_dump(mode="json")
    return Lineage(git_commit=state.get("git.commit", ""), git_dirty=dirty, code_diff_sha256=diff, data=data,
                   params=params, training_data=training_data_hashes(root / "dvc.lock"),
                   inputs=training_inputs(root / "dvc.lock"), gates=gate_results(root), libraries=library_versions())


# --- logging lineage on the train run ---------------------------------------------------------------


def local_source(path: str):
    """MLflow's dataset source for a local path (the project-relative DVC path)."""
    from mlflow.data.dataset_source_registry import get_registered_sources

    # MLflow annotates the registry as DatasetSource instances; it holds the classes (made at import time).
    classes: list[Any] = list(get_registered_sources())
    source = next(cls for cls in classes if cls._get_source_type() == "local")
    return source(path)


def dataset_inputs(inputs: Mapping[str, str], context: str = "training") -> list:
    """One MLflow dataset per DVC input: named by its path, digested by its DVC md5 (no data loaded)."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    # MetaDataset leaves Dataset.profile abstract, but Dataset is no ABC: it instantiates (and has no profile).
    return [DatasetInput(dataset=MetaDataset(local_source(path), name=path,  # type: ignore[abstract]
                                             digest=md5)._to_mlflow_entity(),
                         tags=[InputTag(MLFLOW_DATASET_CONTEXT, context), InputTag("dvc.md5", md5)])
            for path, md5 in inputs.items()]


def lineage_record(lineage: Lineage, record: TrainRecord | None = None) -> dict[str, Any]:
    """The lineage as one JSON document (the train run's lineage/lineage.json)."""
    document = {**asdict(lineage), "code_version": lineage.code_version}
    if record:
        document["model"] = {"weights_sha256": record.weights_sha256, "prior": record.prior,
                             "backbone": record.backbone, "image_encoder_id": record.image_encoder_id}
    return document


def log_run_lineage(client, run_id: str, root: Path, lineage: Lineage, complete: bool, params_file: str = "params.yaml",
                    record: TrainRecord | None = None) -> None:
    """Lineage onto the run `run_id`: params.yaml, gate reports, (dvc.lock), datasets, tags.

    Idempotent: artifacts are overwritten in place, MLflow keeps one input per (dataset, run), tags are set.
    """
    with_root = Path(root)
    client.log_artifact(run_id, str(with_root / params_file), LINEAGE_ARTIFACTS)
    for report in gate_reports(with_root):
        client.log_artifact(run_id, str(report), f"{LINEAGE_ARTIFACTS}/reports")
    if complete and (with_root / "dvc.lock").is_file():
        client.log_artifact(run_id, str(with_root / "dvc.lock"), LINEAGE_ARTIFACTS)
    client.log_dict(run_id, lineage_record(lineage, record), f"{LINEAGE_ARTIFACTS}/lineage.json")
    if lineage.inputs:
        client.log_inputs(run_id, datasets=dataset_inputs(lineage.inputs))
    tags = VersionTags(git_commit=lineage.git_commit, git_dirty=lineage.git_dirty, code_version=lineage.code_version,
                       training_inputs=lineage.inputs, gates=lineage.gates, libraries=lineage.libraries,
                       ).to_tags(only=("git_commit", "git_dirty", "code_version", *LINEAGE_FIELDS))
    tags[COMPLETE_TAG] = str(complete).lower()
    for gate, result in lineage.gates.items():
        tags[f"gate.{gate}"] = "passed" if result["success"] else "failed"
    for key, value in tags.items():
        client.set_tag(run_id, key, value)


def record_training_lineage(run, root: Path, input_paths: Iterable[str], params_file: str = "params.yaml") -> None:
    """What the `train` stage knows of its lineage, on its own run (registration completes it)."""
    if not run.active:
        return
    paths = [str(path) for path in input_paths]
    inputs = upstream_inputs(root / "dvc.lock", paths)
    if not inputs:
        logger.warning("lineage: %s records none of the train stage's inputs yet; registration records them",
                       root / "dvc.lock")
    lineage = replace(collect_lineage(root, params_file), inputs=inputs,
                      training_data={path: inputs[path] for path in paths if path in inputs})
    log_run_lineage(registry_client(root), run.run_id, root, lineage, complete=False, params_file=params_file)


def complete_train_run(client, run_id: str, root: Path, lineage: Lineage, record: TrainRecord) -> bool:
    """Finish the train run's lineage once dvc.lock is final; False when the run is gone or already complete
    with these inputs."""
    from mlflow.exceptions import MlflowException

    if not run_id:
        logger.warning("lineage: the train record names no MLflow run; only the model version carries lineage")
        return False
    try:
        run = client.get_run(run_id)
    except MlflowException as error:
        logger.warning("lineage: the train run %s cannot be read (%s); only the model version carries lineage",
                       run_id, error)
        return False
    tags = run.data.tags
    if tags.get(COMPLETE_TAG) == "true" and tags.get(INPUTS_TAG) == json.dumps(lineage.inputs, sort_keys=True):
        return False
    if tags.get(INPUTS_TAG) and json.loads(tags[INPUTS_TAG]) != lineage.inputs:
        logger.warning("lineage: the train run %s recorded other inputs than dvc.lock now holds (was train run "
                       "outside dvc repro?); dvc.lock's are recorded as final", run_id)
    log_run_lineage(client, run_id, root, lineage, complete=True, record=record)
    return True


def lineage_tags(lineage: Lineage) -> dict[str, str]:
    """What the model version carries beyond identity and provenance: inputs, gates, libraries."""
    return VersionTags(training_inputs=lineage.inputs, gates=lineage.gates,
                       libraries=lineage.libraries).to_tags(only=LINEAGE_FIELDS)
