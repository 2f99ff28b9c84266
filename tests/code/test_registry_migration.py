"""`art2mus registry migrate` on a real MLflow SQLite store: the former name `art2mus-aligner` copied to
`art2mus` with its versions, tags, aliases and promotion history; commands refuse a store not migrated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from art2mus.cli.main import app
from art2mus.errors import Art2MusError
from art2mus.tracking.migration import migrate_former_name
from art2mus.tracking.registry import (
    CHALLENGER,
    CHAMPION,
    CHAMPION_URI,
    FORMER_MODEL_NAME,
    HISTORY_PREFIX,
    MIGRATE_COMMAND,
    MODEL_NAME,
    PromotionEvent,
    RegistryNotMigrated,
    aliases,
    champion_stack,
    champion_version,
    ensure_registered_model,
    history,
    require_registry,
)

EVENTS = [PromotionEvent(at="2026-01-01T00:00:00+00:00", kind="promote", version="1", previous=None, by="alice"),
          PromotionEvent(at="2026-02-01T00:00:00+00:00", kind="promote", version="2", previous="1", by="bob",
                         reason="better", metrics={"retrieval_top1": 0.5})]


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    """An empty SQLite store, the one the commands of a project in tmp_path use."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    return MlflowClient(tracking_uri=uri)


def register_former(client: MlflowClient, count: int = 3) -> dict[str, str]:
    """`count` versions of the former name as an older art2mus made them: tags, history, champion 2,
    challenger the newest; returns version -> its run id."""
    client.create_registered_model(FORMER_MODEL_NAME, tags={"team": "audio"}, description="the former registry")
    experiment = client.create_experiment("art2mus")
    runs = {}
    for number in range(1, count + 1):
        run = client.create_run(experiment, run_name="register")
        version = client.create_model_version(FORMER_MODEL_NAME, source=f"runs:/{run.info.run_id}/art2mus",
                                              run_id=run.info.run_id, description=f"version {number}",
                                              tags={"identity": f"id-{number}", "validation_status": "passed"})
        runs[str(version.version)] = run.info.run_id
    for index, event in enumerate(EVENTS):
        client.set_registered_model_tag(FORMER_MODEL_NAME, f"{HISTORY_PREFIX}{index:020d}",
                                        json.dumps(event.__dict__, sort_keys=True))
    client.set_registered_model_alias(FORMER_MODEL_NAME, CHAMPION, "2")
    client.set_registered_model_alias(FORMER_MODEL_NAME, CHALLENGER, str(count))
    return runs


def test_migration_copies_versions_tags_aliases_and_history(client: MlflowClient) -> None:
    runs = register_former(client)
    with pytest.raises(RegistryNotMigrated, match=MIGRATE_COMMAND):
        champion_version(client)

    migration = migrate_former_name(client)

    assert migration.copied == [("1", "1"), ("2", "2"), ("3", "3")]
    assert migration.aliases == {CHALLENGER: "3", CHAMPION: "2"}
    assert (migration.history_events, migration.other_tags, migration.description) == (2, 1, True)
    for former, new in migration.copied:
        old_version = client.get_model_version(FORMER_MODEL_NAME, former)
        new_version = client.get_model_version(MODEL_NAME, new)
        assert new_version.source == old_version.source == f"runs:/{runs[former]}/art2mus"  # not models:/<old>/n
        assert new_version.run_id == runs[former] and new_version.description == f"version {former}"
        assert new_version.tags == {**old_version.tags, "migrated_from": f"{FORMER_MODEL_NAME}/{former}"}
    model = client.get_registered_model(MODEL_NAME)
    assert model.tags["team"] == "audio" and model.description == "the former registry"
    assert champion_version(client) == "2"  # what a retrain compares its candidate against
    assert aliases(client) == {CHAMPION: "2", CHALLENGER: "3"}
    assert history(client) == EVENTS and champion_stack(history(client)) == ["1", "2"]
    old = client.get_registered_model(FORMER_MODEL_NAME)  # left in place, unchanged
    assert old.aliases == {CHAMPION: 2, CHALLENGER: 3} and len(client.search_model_versions(
        f"name = '{FORMER_MODEL_NAME}'")) == 3


def test_a_second_migration_has_nothing_to_do_and_keeps_what_changed_since(client: MlflowClient) -> None:
    register_former(client)
    migrate_former_name(client)
    client.set_registered_model_alias(MODEL_NAME, CHAMPION, "3")  # the new registry lives on
    client.delete_registered_model_alias(MODEL_NAME, CHALLENGER)
    client.create_model_version(MODEL_NAME, source="runs:/abc/art2mus")  # a retrain after the migration

    again = migrate_former_name(client)

    assert not again.changed
    assert aliases(client) == {CHAMPION: "3"}
    assert len(client.search_model_versions(f"name = '{MODEL_NAME}'")) == 4


def test_the_command_prints_what_it_did_and_then_that_there_is_nothing_to_do(client: MlflowClient) -> None:
    register_former(client, count=2)
    client.set_registered_model_alias(FORMER_MODEL_NAME, CHAMPION, "1")
    client.delete_registered_model_alias(FORMER_MODEL_NAME, CHALLENGER)  # 3 does not exist here
    runner = CliRunner()

    first = runner.invoke(app, ["registry", "migrate"])

    assert first.exit_code == 0, first.output
    assert f"registry migrate: {FORMER_MODEL_NAME} -> {MODEL_NAME}" in first.output
    assert "copied 2 versions (old->new): 1->1, 2->2" in first.output
    assert f"aliases set on {MODEL_NAME}: champion -> version 1" in first.output
    assert "copied 2 history events, 1 other model tag, the description" in first.output
    assert f"left {FORMER_MODEL_NAME} in place" in first.output
    second = runner.invoke(app, ["registry", "migrate"])
    assert second.exit_code == 0 and "already migrated" in second.output and "nothing to do" in second.output


def test_delete_old_removes_the_former_model_and_the_copies_still_resolve(client: MlflowClient) -> None:
    register_former(client, count=2)

    migration = migrate_former_name(client, delete_former=True)

    assert migration.deleted_former
    assert [model.name for model in client.search_registered_models()] == [MODEL_NAME]
    assert client.get_model_version_download_uri(MODEL_NAME, "2").endswith("/art2mus")
    assert not migrate_former_name(client).former_exists


def test_migration_refuses_a_new_name_with_versions_of_its_own(client: MlflowClient) -> None:
    register_former(client, count=2)
    client.create_registered_model(MODEL_NAME)
    client.create_model_version(MODEL_NAME, source="runs:/abc/art2mus")

    with pytest.raises(Art2MusError, match="already has versions 1 that did not come from"):
        migrate_former_name(client)
    result = CliRunner().invoke(app, ["registry", "migrate"])
    assert result.exit_code == 1 and "migrating would mix two registries" in result.output
    assert len(client.search_model_versions(f"name = '{MODEL_NAME}'")) == 1


def test_a_store_with_only_the_former_name_stops_every_registry_command(client: MlflowClient) -> None:
    register_former(client, count=2)
    for read in (aliases, history, require_registry, ensure_registered_model):
        with pytest.raises(RegistryNotMigrated, match=f"run `{MIGRATE_COMMAND}` first"):
            read(client)
    assert [model.name for model in client.search_registered_models()] == [FORMER_MODEL_NAME]  # nothing created
    runner = CliRunner()
    for command in (["history"], ["rollback", "--quiet"], ["promote", "1", "--quiet"], ["lineage", CHAMPION_URI],
                    ["retrain", "--quiet"], ["evaluate", "--model", CHAMPION_URI]):
        result = runner.invoke(app, command)
        assert result.exit_code != 0 and MIGRATE_COMMAND in result.output, (command, result.output)


def test_a_half_done_migration_still_stops_commands_and_a_rerun_finishes_it(client: MlflowClient) -> None:
    register_former(client, count=2)
    client.create_registered_model(MODEL_NAME, tags={"migration": "in progress"})  # interrupted before any copy

    with pytest.raises(RegistryNotMigrated):
        champion_version(client)
    migration = migrate_former_name(client)
    assert [new for _, new in migration.copied] == ["1", "2"] and champion_version(client) == "2"


def test_a_store_without_either_name_starts_empty(client: MlflowClient) -> None:
    assert champion_version(client) is None and history(client) == []
    assert not migrate_former_name(client).former_exists
