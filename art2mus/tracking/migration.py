"""`art2mus registry migrate`: the registered model's former name `art2mus-aligner` copied to `art2mus`.

Versions (their source, run, logged model, tags and description), the model's tags (the promotion history
among them), its description and its aliases. While it runs, MODEL_NAME carries MIGRATION_TAG "in progress",
so the guard in art2mus.tracking.registry (`current_model`, below this module) keeps every registry command
off a half-copied store; at the end the tag says when the migration finished.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from art2mus.errors import Art2MusError
from art2mus.tracking.registry import (
    FORMER_MODEL_NAME,
    HISTORY_PREFIX,
    MIGRATION_IN_PROGRESS,
    MIGRATION_TAG,
    MODEL_NAME,
    registered_model_or_none,
    utc_now,
)

MIGRATED_FROM_TAG = "migrated_from"  # on a copied version: "<former name>/<former version>"


@dataclass
class Migration:
    """What `migrate_former_name` did (or would refuse), for the command to print."""

    copied: list[tuple[str, str]] = field(default_factory=list)  # (former version, new version)
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> new version
    history_events: int = 0
    other_tags: int = 0
    description: bool = False
    deleted_former: bool = False
    former_exists: bool = True

    @property
    def changed(self) -> bool:
        return bool(self.copied or self.aliases or self.history_events or self.other_tags or self.description
                    or self.deleted_former)


def migrated_versions(client) -> tuple[dict[str, str], list[str]]:
    """(former version -> new version) of the versions a migration copied, and the new versions it did not make."""
    copied: dict[str, str] = {}
    foreign: list[str] = []
    for model_version in client.search_model_versions(f"name = '{MODEL_NAME}'"):
        origin = model_version.tags.get(MIGRATED_FROM_TAG, "")
        name, _, former = origin.rpartition("/")
        if name == FORMER_MODEL_NAME:
            copied[former] = str(model_version.version)
        else:
            foreign.append(str(model_version.version))
    return copied, sorted(foreign, key=int)


def start_migration(client) -> None:
    """Create MODEL_NAME if absent and mark it as being migrated: commands refuse it until the mark says done."""
    model = registered_model_or_none(client, MODEL_NAME)
    if model is None:
        model = client.create_registered_model(MODEL_NAME)
    if MIGRATION_TAG not in model.tags:
        client.set_registered_model_tag(MODEL_NAME, MIGRATION_TAG, MIGRATION_IN_PROGRESS)


def copy_version(model_version: Any, client) -> str:
    """A new version of MODEL_NAME with the former version's source, run, logged model, tags and description.

    Not MlflowClient.copy_model_version: its copy's source is `models:/<former name>/<version>`, so the new
    version would stop loading once the former model is deleted; this keeps the original source.
    """
    tags = {**model_version.tags, MIGRATED_FROM_TAG: f"{FORMER_MODEL_NAME}/{model_version.version}"}
    created = client.create_model_version(MODEL_NAME, source=model_version.source, run_id=model_version.run_id,
                                          tags=tags, run_link=model_version.run_link,
                                          description=model_version.description, model_id=model_version.model_id)
    return str(created.version)


def copy_model_metadata(former: Any, target: Any, numbers: Mapping[str, str], migration: Migration, client) -> None:
    """The former model's tags (the promotion history among them) and description the target lacks, and its
    aliases on the new version numbers where the target has none by that name."""
    for key, value in sorted(former.tags.items()):
        if key in target.tags:
            continue
        client.set_registered_model_tag(MODEL_NAME, key, value)
        if key.startswith(HISTORY_PREFIX):
            migration.history_events += 1
        else:
            migration.other_tags += 1
    if former.description and not target.description:
        client.update_registered_model(MODEL_NAME, description=former.description)
        migration.description = True
    for alias, version in sorted(former.aliases.items()):
        if alias not in target.aliases and str(version) in numbers:
            client.set_registered_model_alias(MODEL_NAME, alias, numbers[str(version)])
            migration.aliases[alias] = numbers[str(version)]


def migrate_former_name(client, delete_former: bool = False) -> Migration:
    """Copy FORMER_MODEL_NAME's versions, tags, description, history and aliases into MODEL_NAME.

    Idempotent: versions are matched by their MIGRATED_FROM_TAG, tags and aliases already there are kept.
    Before a first migration has finished, refuses when MODEL_NAME holds versions no migration made. Aliases
    and model tags are copied only until the migration has finished once: afterwards MODEL_NAME's own champion
    and history win (a version registered under the former name since is still copied). The former model
    stays unless `delete_former`.
    """
    former = registered_model_or_none(client, FORMER_MODEL_NAME)
    if former is None:
        return Migration(former_exists=False)
    copied, foreign = migrated_versions(client)
    target = registered_model_or_none(client, MODEL_NAME)
    finished = target is not None and target.tags.get(MIGRATION_TAG, MIGRATION_IN_PROGRESS) != MIGRATION_IN_PROGRESS
    if foreign and not finished:
        raise Art2MusError(
            f"registry: {MODEL_NAME} already has versions {', '.join(foreign)} that did not come from "
            f"{FORMER_MODEL_NAME}: migrating would mix two registries; compare them (art2mus history, the MLflow UI) "
            f"and delete one of the two registered models by hand")
    former_versions = sorted(client.search_model_versions(f"name = '{FORMER_MODEL_NAME}'"),
                             key=lambda found: int(found.version))
    pending = [model_version for model_version in former_versions if str(model_version.version) not in copied]
    migration = Migration()
    if pending or not finished:
        start_migration(client)
        for model_version in pending:
            copied[str(model_version.version)] = copy_version(model_version, client)
            migration.copied.append((str(model_version.version), copied[str(model_version.version)]))
        if not finished:
            copy_model_metadata(former, client.get_registered_model(MODEL_NAME), copied, migration, client)
            client.set_registered_model_tag(MODEL_NAME, MIGRATION_TAG, f"from {FORMER_MODEL_NAME} at {utc_now()}")
    if delete_former:
        client.delete_registered_model(FORMER_MODEL_NAME)
        migration.deleted_former = True
    return migration
