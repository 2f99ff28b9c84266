"""Mutual exclusion: a file lock in the project, and with a Prefect server a one-slot global concurrency limit.

The retrain holds RETRAIN_LOCK for its whole run (and gc takes it, so neither runs under the other);
a move of the champion holds REGISTRY_LOCK for seconds. With a Prefect server (PREFECT_API_URL) each
also takes a slot of a named limit, so checkouts sharing that server take turns too. Ephemeral Prefect
starts a temporary server per process whose leases die with it (a killed run would hold its slot for
ever), so there the file lock alone keeps operators apart.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from art2mus.errors import Art2MusError

SLOT_REQUEST_SECONDS = 30.0  # the least time given to acquiring a Prefect slot (a request, even when one is free)

logger = logging.getLogger(__name__)
Logger = logging.Logger | logging.LoggerAdapter


def prefect_server_url() -> str | None:
    """PREFECT_API_URL (environment or Prefect profile), None when Prefect runs ephemerally."""
    from prefect.settings import PREFECT_API_URL  # Prefect's settings import most of Prefect

    return PREFECT_API_URL.value() or None


def ensure_concurrency_limit(name: str) -> bool:
    """Create the one-slot global concurrency limit `name` unless it exists (an operator's setting wins);
    True when all its slots are taken right now. A server that does not answer is a clear error."""
    import httpx
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            try:
                limit = client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                with contextlib.suppress(ObjectAlreadyExists):  # another operator created it meanwhile
                    client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
                return False
            return limit.active_slots >= limit.limit
    except (httpx.HTTPError, OSError) as error:
        raise Art2MusError(f"the Prefect server at {prefect_server_url()} (PREFECT_API_URL) did not answer ({error}); "
                           "start it, or unset PREFECT_API_URL to rely on the project's lock alone") from None


@contextlib.contextmanager
def concurrency_slot(name: str, wait_seconds: float, busy: Art2MusError, log: Logger = logger) -> Iterator[None]:
    """One slot of the limit `name` (created on first use); `busy` is raised when none frees up in time.
    Nothing to take when Prefect runs ephemerally."""
    if not prefect_server_url():
        yield
        return
    from prefect.concurrency.sync import concurrency

    if ensure_concurrency_limit(name):
        if wait_seconds <= 0:
            raise busy
        log.info("the Prefect concurrency limit %r is full; waiting up to %.0f s", name, wait_seconds)
    with contextlib.ExitStack() as stack:
        try:  # acquiring takes a request even when a slot is free: never time out before it can answer
            stack.enter_context(concurrency(name, occupy=1, timeout_seconds=max(wait_seconds, SLOT_REQUEST_SECONDS),
                                            strict=True))
        except TimeoutError:
            raise busy from None
        yield


@contextlib.contextmanager
def file_lock(path: Path, wait_seconds: float, busy: Art2MusError, log: Logger = logger) -> Iterator[None]:
    """Hold the lock file `path` (waiting up to `wait_seconds`), or raise `busy`."""
    from filelock import FileLock, Timeout

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if wait_seconds <= 0:
            raise busy from None
        log.info("%s is held; waiting up to %.0f s", path, wait_seconds)
        try:
            lock.acquire(timeout=wait_seconds)
        except Timeout:
            raise busy from None
    try:
        yield
    finally:
        lock.release()
