"""Concurrent operators on one registry: real processes promoting and rolling back at the same moment.

Each process is spawned (its own interpreter, its own SQLite connections) and waits at a barrier, so
they all start their promotion or rollback together. The alias write is slowed down inside each
process so that every one of them reads the champion before any of them moves it: without a lock
around read-check-move, the race happens every time, not once in a while.
"""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from art2mus.errors import Art2MusError
from art2mus.tracking.registry import (
    CHAMPION,
    MODEL_NAME,
    aliases,
    champion_stack,
    ensure_registered_model,
    history,
    promote,
    rollback,
)

OPERATORS = 3
SLOW_WRITE_SECONDS = 1.0  # how long each process sits between reading the champion and moving it
JOIN_SECONDS = 180


class SlowAliasClient(MlflowClient):
    """A client whose alias writes come late: the window between reading and moving the alias, wide open."""

    def set_registered_model_alias(self, *args, **kwargs):
        time.sleep(SLOW_WRITE_SECONDS)
        return super().set_registered_model_alias(*args, **kwargs)


def operator(action: str, version: str, uri: str, barrier, results) -> None:
    """One operator's `promote VERSION --force` or `rollback`, in its own process."""
    client = SlowAliasClient(tracking_uri=uri)
    aliases(client)  # connect (and let MLflow check the schema) before the start signal
    barrier.wait(timeout=JOIN_SECONDS)
    try:
        if action == "promote":
            event = promote(version, by=f"operator-{multiprocessing.current_process().name}", client=client,
                            smoke=False, force=True)
        else:
            event = rollback(by="operator", client=client)
    except Art2MusError as error:
        results.put(("refused", str(error)))
        return
    results.put(("moved", None if event is None else (event.previous, event.version)))


def run_operators(actions: list[tuple[str, str]], uri: str) -> list[tuple]:
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(len(actions)), context.Queue()
    processes = [context.Process(target=operator, args=(action, version, uri, barrier, results))
                 for action, version in actions]
    for process in processes:
        process.start()
    for process in processes:
        process.join(JOIN_SECONDS)
    assert all(process.exitcode == 0 for process in processes), [process.exitcode for process in processes]
    return [results.get(timeout=5) for _ in processes]


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, MlflowClient]:
    """A registry with versions 1, 2 and 3 (metadata only: these tests never load a model), in a project
    at tmp_path (the working directory of every operator: the registry lock is the project's)."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    ensure_registered_model(client)
    for _ in range(3):
        client.create_model_version(MODEL_NAME, source=(tmp_path / "model").as_uri())
    return uri, client


def champions(client: MlflowClient) -> list[str]:
    numbers = [str(v.version) for v in client.search_model_versions(f"name = '{MODEL_NAME}'")]
    return [number for number in numbers if CHAMPION in client.get_model_version(MODEL_NAME, number).aliases]


def assert_history_is_a_chain(client: MlflowClient) -> list[tuple]:
    """Every event moves the champion away from the one the event before left in place."""
    moves = [(event.kind, event.previous, event.version) for event in history(client)]
    assert all(previous != version for _, previous, version in moves), moves  # no self-moves
    assert all(later[1] == earlier[2] for earlier, later in zip(moves, moves[1:])), moves
    return moves


@pytest.mark.slow  # spawned processes, each importing MLflow
def test_concurrent_promotions_of_one_version_record_one_move(store) -> None:
    uri, client = store
    promote("1", by="alice", client=client, smoke=False)

    results = run_operators([("promote", "2")] * OPERATORS, uri)

    assert champions(client) == ["2"]
    assert sorted(results, key=str) == sorted([("moved", ("1", "2"))] + [("moved", None)] * (OPERATORS - 1), key=str)
    assert assert_history_is_a_chain(client) == [("promote", None, "1"), ("promote", "1", "2")]
    event = rollback(by="alice", client=client)
    assert (event.previous, event.version) == ("2", "1") and champions(client) == ["1"]


@pytest.mark.slow  # spawned processes, each importing MLflow
def test_concurrent_rollbacks_walk_back_one_step_each(store) -> None:
    uri, client = store
    for version in ("1", "2", "3"):
        promote(version, by="alice", client=client, smoke=False)

    results = run_operators([("rollback", "")] * 2, uri)

    assert sorted(results) == [("moved", ("2", "1")), ("moved", ("3", "2"))]
    assert champions(client) == ["1"]
    assert_history_is_a_chain(client)
    assert champion_stack(history(client)) == ["1"]


def test_a_history_with_self_moves_from_before_the_lock_rolls_back_to_another_version() -> None:
    from art2mus.tracking.registry import PromotionEvent

    def event(kind: str, previous: str | None, version: str) -> PromotionEvent:
        return PromotionEvent(at="2026-01-01T00:00:00+00:00", kind=kind, version=version, previous=previous, by="x")

    raced = [event("promote", None, "1"), event("promote", "1", "2"), event("promote", "2", "2")]
    assert champion_stack(raced) == ["1", "2"]
    assert champion_stack([*raced, event("rollback", "2", "1")]) == ["1"]


def test_a_promotion_judged_against_another_champion_is_refused(store) -> None:
    """The retrain flow passes the champion `decide` compared against; if it moved meanwhile, nothing moves."""
    from art2mus.tracking.registry import ChampionChanged

    _, client = store
    promote("1", by="alice", client=client, smoke=False)
    promote("2", by="bob", client=client, smoke=False)  # while a retrain was judging version 3 against 1
    with pytest.raises(ChampionChanged, match="the champion is now version 2, not version 1 as when version 3 was"):
        promote("3", by="flow", client=client, smoke=False, expected_champion="1")
    assert champions(client) == ["2"] and len(history(client)) == 2
    event = promote("3", by="flow", client=client, smoke=False, expected_champion="2")
    assert (event.previous, event.version) == ("2", "3")
    assert promote("3", by="flow", client=client, smoke=False, expected_champion="2") is None  # a retried attempt
    assert len(history(client)) == 3
