"""Delivering an alert through a notification block whose `notify` answers with a coroutine."""

from __future__ import annotations

import asyncio

import pytest
from prefect._internal.compatibility.async_dispatch import async_dispatch
from prefect.blocks.abstract import NotificationBlock

import art2mus.alerts
from art2mus.alerts import Alert, send_alert
from art2mus.config import AlertsParams
from art2mus.errors import Art2MusError

SENT: list[tuple[str | None, str]] = []


class AsyncOnlyBlock(NotificationBlock):
    """A block as NotificationBlock declares one: `notify` is a coroutine function."""

    async def notify(self, body: str, subject: str | None = None) -> None:
        SENT.append((subject, body))


class DispatchingBlock(NotificationBlock):
    """Like Prefect's own blocks: `notify` is synchronous, unless async_dispatch finds an async context."""

    async def anotify(self, body: str, subject: str | None = None) -> None:
        SENT.append((subject, f"async: {body}"))

    @async_dispatch(anotify)
    def notify(self, body: str, subject: str | None = None) -> None:
        SENT.append((subject, f"sync: {body}"))


class FailingBlock(NotificationBlock):
    async def notify(self, body: str, subject: str | None = None) -> None:
        raise ConnectionError("refused")


@pytest.fixture(autouse=True)
def sent() -> list[tuple[str | None, str]]:
    SENT.clear()
    return SENT


def through(block: NotificationBlock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(art2mus.alerts, "alert_destination", lambda config: (block, "the test block"))


def test_a_block_whose_notify_is_async_delivers(monkeypatch: pytest.MonkeyPatch, sent: list) -> None:
    through(AsyncOnlyBlock(), monkeypatch)
    assert send_alert(Alert("subject", "body"), AlertsParams()) == "the test block"
    assert sent == [("subject", "body")]


def test_an_alert_sent_inside_a_running_event_loop_is_delivered(monkeypatch: pytest.MonkeyPatch, sent: list) -> None:
    through(DispatchingBlock(), monkeypatch)

    async def hook() -> str:  # a flow hook called where an event loop runs: async_dispatch picks anotify
        return send_alert(Alert("subject", "body"), AlertsParams())

    assert asyncio.run(hook()) == "the test block"
    assert sent == [("subject", "async: body")]
    assert send_alert(Alert("subject", "body"), AlertsParams()) == "the test block"  # no loop: the sync path
    assert sent[-1] == ("subject", "sync: body")


def test_an_async_delivery_failure_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    through(FailingBlock(), monkeypatch)
    with pytest.raises(Art2MusError, match="the test block did not take the alert: ConnectionError: refused"):
        send_alert(Alert("subject", "body"), AlertsParams())
