"""The model registry: versions of `art2mus`, the champion/challenger aliases, promotion history.

- One name for the whole packaged pipeline (aligner, prior, image encoder): the registered model, the
  logged model and the folder models/art2mus. Stores made before hold it as `art2mus-aligner`
  (FORMER_MODEL_NAME): `art2mus registry migrate` copies it (art2mus.tracking.migration, above this
  module); until then every registry command stops with that advice (`current_model`, the guard) rather
  than start a second registry without a champion.

- Aliases only (`champion`, `challenger`), never stages.
- A version is the packaged model folder logged as an MLflow pyfunc (models from code, safetensors
  weights, nothing pickled: art2mus.tracking.logged_model, below this module), tagged with its identity
  and lineage: git commit, data hashes from dvc.lock, full params, the aligner's weights hash, the prior,
  the image encoder and backbone ids.
- Identity = sha256 over the weights hash, the prior, the image encoder, the code version and the
  hashes of the data the `train` stage read (its dvc.lock deps). Registering an identity the
  registry already holds returns that version and logs nothing, so the same code, params and data
  never make two versions. Outputs downstream of training (gate reports carry GX timestamps, the
  evaluation) are lineage, not identity: re-running them does not make the same model new.
- Promotion moves the `champion` alias in one call: MLflow keeps one row per (model, alias) and
  updates it in place, so at no moment is there no champion or two. The event is then recorded as
  version tags (`promoted_by`, `promoted_at`, `previous_champion`) and in the registry-side log, one
  registered-model tag per event (`history.<ns>`), so history survives without local files.
- Rollback walks that log back: every promotion pushes a version, every rollback pops one.
- Operators take turns: reading the champion, checking it, moving the alias and writing the history
  happen under the registry lock (a file lock in the project, REGISTRY_LOCK, plus the Prefect
  concurrency limit `art2mus-registry` when a Prefect server is configured), held for seconds; the
  smoke test runs before it. Not the retrain lock: a retrain holds that for its whole run and promotes
  inside it. So two `promote 2` at once record one move, and the second finds 2 already champion.

What a version was made from is art2mus.tracking.lineage (below this module); tracing a version back to
its inputs, finding the versions a file went into and restoring inputs is art2mus.tracking.audit (above).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from art2mus.env import project_root
from art2mus.errors import Art2MusError
from art2mus.io import read_json
from art2mus.locks import concurrency_slot, file_lock
from art2mus.tracking.client import registry_client
from art2mus.tracking.lineage import Lineage, complete_train_run
from art2mus.tracking.logged_model import log_pyfunc
from art2mus.workspace import (
    DECISION_CHAMPION_TAG,
    DECISION_KEY_TAG,
    DECISION_PREFIX,
    DECISION_REASONS_TAG,
    IDENTITY_TAG,
    MODEL_FILE,
    PROMOTED_AT_TAG,
    REGISTRY_LOCK,
    ROLLED_BACK_AT_TAG,
    VALIDATION_TAG,
    TrainRecord,
    VersionTags,
)

logger = logging.getLogger(__name__)

MODEL_NAME = "art2mus"
FORMER_MODEL_NAME = "art2mus-aligner"  # the registered model's name before issue 13
CHAMPION = "champion"
CHALLENGER = "challenger"
CHAMPION_URI = f"models:/{MODEL_NAME}@{CHAMPION}"
MIGRATE_COMMAND = "art2mus registry migrate"
MIGRATION_TAG = "migration"  # on MODEL_NAME while a migration from FORMER_MODEL_NAME runs, then when it ended
MIGRATION_IN_PROGRESS = "in progress"
VALIDATION_STATUSES = ("pending", "passed", "failed", "awaiting_approval")
HISTORY_PREFIX = "history."
DECISION_META_TAGS = (DECISION_REASONS_TAG, DECISION_CHAMPION_TAG, DECISION_KEY_TAG)
REGISTRY_LIMIT = "art2mus-registry"  # the Prefect concurrency limit a move of the champion takes (with a server)
REGISTRY_WAIT_SECONDS = 60.0  # how long a promotion or rollback waits for another one (each holds it for seconds)
ANY_CHAMPION = object()  # promote(expected_champion=...): move whichever version is champion now


class RegistryBusy(Art2MusError):
    """Another promotion or rollback held the registry lock for longer than we wait."""


class ChampionChanged(Art2MusError):
    """The champion is no longer the one a decision compared the candidate against."""


class RegistryNotMigrated(Art2MusError):
    """The store holds the model under FORMER_MODEL_NAME only (or a migration stopped half-way)."""


@dataclass(frozen=True)
class RegisteredVersion:
    version: str
    created: bool  # False: the identity was already registered as this version
    identity: str


@dataclass(frozen=True)
class PromotionEvent:
    """One move of the champion alias, as the registry-side log keeps it."""

    at: str  # ISO 8601, UTC
    kind: str  # "promote" or "rollback"
    version: str  # the new champion
    previous: str | None  # the champion before, if any
    by: str
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)


def read_model_info(model_dir: Path) -> dict[str, Any]:
    """The packaged model's model.json, or a clear error."""
    path = model_dir / MODEL_FILE
    if not path.is_file():
        raise Art2MusError(f"{model_dir}: not an art2mus model (no {MODEL_FILE}); run the train stage")
    return read_json(path)


def model_identity(weights_sha256: str, prior: str, image_encoder: Mapping[str, Any], lineage: Lineage) -> str:
    """What makes two registrations the same model: weights, prior, encoder, code and training data
    (all of dvc.lock's data when the lock has no train stage)."""
    key = {"weights_sha256": weights_sha256, "prior": prior, "image_encoder": dict(image_encoder),
           "code": lineage.code_version, "data": lineage.training_data or lineage.data}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def registered_model_or_none(client, name: str) -> Any | None:
    """The registered model `name`, None when the store has none."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    try:
        return client.get_registered_model(name)
    except MlflowException as error:
        if error.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return None
        raise


def not_migrated_error() -> RegistryNotMigrated:
    return RegistryNotMigrated(
        f"registry: this tracking store holds the model under its former name {FORMER_MODEL_NAME!r}, not yet "
        f"under {MODEL_NAME!r}: run `{MIGRATE_COMMAND}` first (it copies the versions, tags, aliases and "
        "history; without it this command would start a second registry with no champion)")


def current_model(client) -> Any | None:
    """The registered model MODEL_NAME, None before the first registration; RegistryNotMigrated when it is
    missing or half-migrated while FORMER_MODEL_NAME exists (a command would start a second registry)."""
    model = registered_model_or_none(client, MODEL_NAME)
    if model is not None and model.tags.get(MIGRATION_TAG) != MIGRATION_IN_PROGRESS:
        return model
    if model is not None or registered_model_or_none(client, FORMER_MODEL_NAME) is not None:
        raise not_migrated_error()
    return None


def require_registry(client) -> None:
    """Stop with the migration advice when the store holds the model under its former name only."""
    current_model(client)


def find_version(identity: str, client) -> Any | None:
    """The version registered with this identity (the oldest, should a race have made two)."""
    found = client.search_model_versions(f"name = '{MODEL_NAME}' and tags.{IDENTITY_TAG} = '{identity}'")
    return min(found, key=lambda version: int(version.version)) if found else None


def ensure_registered_model(client) -> None:
    """Create MODEL_NAME on the first registration (never beside a former-name registry not migrated)."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

    if current_model(client) is not None:
        return
    try:
        client.create_registered_model(MODEL_NAME, description="art2mus: the packaged pipeline, image aligner "
                                       "with its prior and image encoder (pyfunc: image bytes in, WAV out)")
    except MlflowException as error:
        if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise


def version_tags(identity: str, record: TrainRecord, info: Mapping[str, Any], lineage: Lineage) -> dict[str, str]:
    """Identity and lineage as the version's tags (validation starts `pending`)."""
    return VersionTags(
        identity=identity, validation_status="pending", weights_sha256=record.weights_sha256,
        prior=record.prior or info.get("prior", ""), backbone=record.backbone or info.get("backbone") or {},
        image_encoder=info.get("image_encoder", {}), image_encoder_id=record.image_encoder_id,
        train_run_id=record.mlflow_run_id, git_commit=lineage.git_commit, git_dirty=lineage.git_dirty,
        code_version=lineage.code_version, data_hashes=lineage.data, training_data_hashes=lineage.training_data,
        params=lineage.params, training_inputs=lineage.inputs, gates=lineage.gates, libraries=lineage.libraries,
    ).to_tags()


def register_model(model_dir: str | Path, record: TrainRecord | Mapping[str, Any], lineage: Lineage, client=None,
                   experiment: str = "art2mus", root: Path | None = None) -> RegisteredVersion:
    """Register the packaged model as a new version, or return the version that already has its identity.

    `record` is the train stage's models/train_record.json (weights hash, prior, run id).
    """
    model_dir = Path(model_dir)
    root = root or project_root()
    info = read_model_info(model_dir)
    record = TrainRecord.from_dict(record)
    weights = record.weights_sha256
    if not weights:
        raise Art2MusError("registry: the train record has no weights_sha256 (re-run the train stage)")
    if info.get("weights_sha256") and info["weights_sha256"] != weights:
        raise Art2MusError(f"registry: {model_dir} holds weights {info['weights_sha256'][:12]} but the train record "
                           f"says {weights[:12]}: the folder and the record are from different runs")
    client = client or registry_client(root)
    identity = model_identity(weights, str(record.prior or info.get("prior", "")),
                              info.get("image_encoder", {}), lineage)
    existing = find_version(identity, client)
    if existing is not None:
        logger.info("registry: %s version %s already has identity %s", MODEL_NAME, existing.version, identity[:12])
        complete_lineage(client, str(existing.version), record, info, lineage, identity, root)
        return RegisteredVersion(version=str(existing.version), created=False, identity=identity)
    ensure_registered_model(client)
    model_uri, model_id, run_id = log_pyfunc(model_dir, identity, record, lineage, client.tracking_uri,
                                             experiment, root)
    version = client.create_model_version(MODEL_NAME, source=model_uri, run_id=run_id, model_id=model_id,
                                          tags=version_tags(identity, record, info, lineage))
    logger.info("registry: registered %s version %s (identity %s)", MODEL_NAME, version.version, identity[:12])
    complete_lineage(client, str(version.version), record, info, lineage, identity, root)
    return RegisteredVersion(version=str(version.version), created=True, identity=identity)


def complete_lineage(client, version: str, record: TrainRecord, info: Mapping[str, Any], lineage: Lineage,
                     identity: str, root: Path) -> None:
    """Finish the train run's lineage now that dvc.lock is final, and give an older version the lineage
    tags it lacks (idempotent: a second call changes nothing)."""
    if (root / "params.yaml").is_file():
        complete_train_run(client, record.mlflow_run_id, root, lineage, record)
    add_missing_version_tags(client, version, version_tags(identity, record, info, lineage))


def aliases(client) -> dict[str, str]:
    """alias -> version of the registered model; empty when nothing is registered yet."""
    model = current_model(client)
    return {alias: str(version) for alias, version in model.aliases.items()} if model is not None else {}


def champion_version(client=None) -> str | None:
    return aliases(client or registry_client()).get(CHAMPION)


def challenger_version(client=None) -> str | None:
    return aliases(client or registry_client()).get(CHALLENGER)


def get_version(version: str, client):
    """The model version, or a clear error naming what exists."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(MODEL_NAME, str(version))
    except MlflowException:
        require_registry(client)
        raise Art2MusError(f"registry: {MODEL_NAME} has no version {version}") from None


def add_missing_version_tags(client, version: str, tags: Mapping[str, str]) -> list[str]:
    """Set the tags a version lacks (an older registration); never overwrite what it recorded."""
    existing = get_version(version, client).tags
    added = [key for key in tags if key not in existing]
    for key in added:
        client.set_model_version_tag(MODEL_NAME, str(version), key, tags[key])
    return added


def set_challenger(version: str, client=None) -> None:
    client = client or registry_client()
    get_version(version, client)
    client.set_registered_model_alias(MODEL_NAME, CHALLENGER, str(version))


def record_validation(version: str, status: str, numbers: Mapping[str, float] | None = None,
                      reasons: list[str] | None = None, client=None, champion: str | None = None,
                      key: str | None = None) -> None:
    """The flow's verdict on a version: `validation_status` plus the decision's numbers as tags.

    With `numbers`, they replace the numbers of an earlier decision; `champion` is the version the
    verdict was reached against (tag `decision.champion`, "none" on a first run); `key` names the
    decision's inputs (tag `decision.key`), so a caller can tell whether a verdict still holds.
    """
    if status not in VALIDATION_STATUSES:
        raise Art2MusError(f"registry: validation status must be one of {', '.join(VALIDATION_STATUSES)}, got {status!r}")
    client = client or registry_client()
    model_version = get_version(version, client)
    if numbers is not None:
        stale = [tag for tag in model_version.tags if tag.startswith(DECISION_PREFIX)
                 and tag.removeprefix(DECISION_PREFIX) not in numbers and tag not in DECISION_META_TAGS]
        for tag in stale:
            client.delete_model_version_tag(MODEL_NAME, str(version), tag)
    for name, value in (numbers or {}).items():
        client.set_model_version_tag(MODEL_NAME, str(version), f"{DECISION_PREFIX}{name}", f"{float(value):.6g}")
    if reasons is not None:
        client.set_model_version_tag(MODEL_NAME, str(version), DECISION_REASONS_TAG, json.dumps(reasons))
    client.set_model_version_tag(MODEL_NAME, str(version), DECISION_CHAMPION_TAG, champion or "none")
    if key is not None:
        client.set_model_version_tag(MODEL_NAME, str(version), DECISION_KEY_TAG, key)
    client.set_model_version_tag(MODEL_NAME, str(version), VALIDATION_TAG, status)


def smoke_test(version: str, client=None) -> None:
    """Load the version's pyfunc as a server would and generate once; Art2MusError if anything fails."""
    import mlflow
    import numpy as np
    import pandas as pd
    import soundfile as sf

    from art2mus.serving.pyfunc import example_image_base64  # mlflow.pyfunc: when smoke testing

    client = client or registry_client()
    mlflow.set_tracking_uri(client.tracking_uri)
    seconds = 0.5
    try:
        model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/{version}")
        output = model.predict(pd.DataFrame({"image": [example_image_base64()], "seconds": [seconds],
                                             "steps": [2], "seed": [0]}))
        wave, rate = sf.read(io.BytesIO(base64.b64decode(output["wav_base64"].iloc[0])), dtype="float32")
    except Exception as error:  # noqa: BLE001 - any failure to load or generate disqualifies the candidate
        raise Art2MusError(f"registry: version {version} failed its smoke test: {error}") from None
    if rate != int(output["sample_rate"].iloc[0]) or len(wave) != round(seconds * rate) or not np.isfinite(wave).all():
        raise Art2MusError(f"registry: version {version} failed its smoke test: {len(wave)} samples at {rate} Hz, "
                           f"expected {round(seconds * rate)} finite samples")


@contextlib.contextmanager
def registry_lock(root: Path | None = None, wait_seconds: float = REGISTRY_WAIT_SECONDS) -> Iterator[None]:
    """Hold the registry lock: with a Prefect server a slot of the one-slot limit REGISTRY_LIMIT (so operators of
    other checkouts sharing the tracking server take turns too), then the project's REGISTRY_LOCK file.

    Held only around read-check-move of the champion alias and the history write (seconds)."""
    path = (root or project_root()) / REGISTRY_LOCK
    with concurrency_slot(REGISTRY_LIMIT, wait_seconds, RegistryBusy(
            f"registry: the Prefect concurrency limit {REGISTRY_LIMIT!r} stayed full for {wait_seconds:.0f} s "
            "(another promotion or rollback); try again")), \
         file_lock(path, wait_seconds, RegistryBusy(f"registry: another promotion or rollback has held {path} for "
                                                    f"{wait_seconds:.0f} s; try again when it has finished")):
        yield


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def append_history(event: PromotionEvent, client) -> None:
    """One registered-model tag per event; the key's nanosecond clock orders them."""
    value = json.dumps(asdict(event), sort_keys=True)
    client.set_registered_model_tag(MODEL_NAME, f"{HISTORY_PREFIX}{time.time_ns():020d}", value)


def history(client=None) -> list[PromotionEvent]:
    """Every move of the champion alias, oldest first."""
    model = current_model(client or registry_client())
    tags = model.tags if model is not None else {}
    return [PromotionEvent(**json.loads(tags[key])) for key in sorted(tags) if key.startswith(HISTORY_PREFIX)]


def champion_stack(events: list[PromotionEvent]) -> list[str]:
    """The champions in force, oldest first: a promotion pushes its version, a rollback pops."""
    stack: list[str] = []
    for event in events:
        if event.kind == "rollback" and stack:
            stack.pop()
            if not stack or stack[-1] != event.version:
                stack.append(event.version)
        elif not stack or stack[-1] != event.version:  # a self-move (recorded by a race before the lock) moved nothing
            stack.append(event.version)
    return stack


def move_champion(version: str, kind: str, by: str, reason: str, metrics: Mapping[str, float] | None,
                  client) -> PromotionEvent:
    """Point `champion` at `version` (one atomic alias update), then record the event; the caller holds
    `registry_lock`."""
    previous = aliases(client).get(CHAMPION)
    client.set_registered_model_alias(MODEL_NAME, CHAMPION, str(version))
    event = PromotionEvent(at=utc_now(), kind=kind, version=str(version), previous=previous, by=by,
                           reason=reason[:500], metrics={key: float(value) for key, value in (metrics or {}).items()})
    for key, value in {"promoted_by": by, PROMOTED_AT_TAG: event.at, "previous_champion": previous or "none",
                       "promotion_reason": event.reason or kind}.items():
        client.set_model_version_tag(MODEL_NAME, str(version), key, value)
    append_history(event, client)
    return event


def promote(version: str, by: str, reason: str = "", metrics: Mapping[str, float] | None = None, client=None,
            smoke: bool = True, force: bool = False, expected_champion: str | None | object = ANY_CHAMPION,
            root: Path | None = None) -> PromotionEvent | None:
    """Make `version` the champion: smoke test first, refuse a failed validation unless forced.

    Promoting the champion is a no-op: None, nothing recorded. `smoke=False` is for a caller that has
    just run `smoke_test` on this version itself. With `expected_champion` (the version a decision
    compared against, None for none), a champion that changed meanwhile raises ChampionChanged and
    nothing moves. The smoke test runs before the registry lock; the checks that matter are made
    again under it.
    """
    client = client or registry_client(root)
    model_version = get_version(version, client)
    if aliases(client).get(CHAMPION) == str(version):
        logger.info("registry: version %s is already the champion; nothing to do", version)
        return None
    if model_version.tags.get(VALIDATION_TAG) == "failed" and not force:
        raise Art2MusError(f"registry: version {version} failed validation (tag {VALIDATION_TAG}); "
                           "promote it anyway with --force")
    if smoke:
        smoke_test(version, client)
    with registry_lock(root):
        current = aliases(client)
        champion = current.get(CHAMPION)
        if champion == str(version):
            logger.info("registry: version %s became the champion meanwhile (art2mus history); nothing recorded",
                        version)
            return None
        if expected_champion is not ANY_CHAMPION and champion != expected_champion:
            raise ChampionChanged(
                f"registry: the champion is now {f'version {champion}' if champion else 'none'}, not "
                f"{f'version {expected_champion}' if expected_champion else 'none'} as when version {version} was "
                f"judged (it moved meanwhile: art2mus history); version {version} is not promoted; retrain again "
                "to judge it against the current champion")
        model_version = get_version(version, client)  # its validation as it is now
        if model_version.tags.get(VALIDATION_TAG) == "failed" and not force:
            raise Art2MusError(f"registry: version {version} failed validation (tag {VALIDATION_TAG}); "
                               "promote it anyway with --force")
        event = move_champion(version, "promote", by, reason, metrics, client)
        if model_version.tags.get(VALIDATION_TAG) == "awaiting_approval":  # this promotion is the approval
            for key, value in {VALIDATION_TAG: "passed", "approved_by": by, "approved_at": event.at}.items():
                client.set_model_version_tag(MODEL_NAME, str(version), key, value)
        if current.get(CHALLENGER) == str(version):
            client.delete_registered_model_alias(MODEL_NAME, CHALLENGER)  # it no longer challenges: it won
    logger.info("registry: version %s is the champion (was %s)", version, event.previous or "none")
    return event


def rollback(by: str, reason: str = "", client=None, root: Path | None = None) -> PromotionEvent:
    """Give the champion alias back to the champion before the current one (per the history): always
    another version (the history's stack never holds one version twice in a row)."""
    client = client or registry_client(root)
    with registry_lock(root):
        current = aliases(client).get(CHAMPION)
        if current is None:
            raise Art2MusError(f"registry: {MODEL_NAME} has no champion to roll back")
        stack = champion_stack(history(client))
        if not stack or stack[-1] != current:
            raise Art2MusError(f"registry: the champion (version {current}) was not set through art2mus promote, "
                               "so the history cannot say which version came before it")
        if len(stack) < 2:
            raise Art2MusError(f"registry: version {current} is the first champion; there is nothing to roll back to")
        target = stack[-2]
        event = move_champion(target, "rollback", by, reason or f"rollback from version {current}", None, client)
        client.set_model_version_tag(MODEL_NAME, current, ROLLED_BACK_AT_TAG, event.at)
    logger.info("registry: rolled back the champion from version %s to %s", current, target)
    return event
