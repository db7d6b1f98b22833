"""The outbox relay's change stream while idle: one getMore per WATCH_AWAIT_SECONDS, ended by a stop."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from crm_platform import outbox
from crm_platform.mongo import OUTBOX
from crm_platform.outbox import OutboxRelay


class _Stream:
    """A change stream whose getMore waits (as mongod's does for max_await_time_ms) for ever."""

    def __init__(self) -> None:
        self.waiting = asyncio.Event()
        self.closed = False

    async def __aenter__(self) -> _Stream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.closed = True

    async def try_next(self) -> None:
        self.waiting.set()
        await asyncio.Event().wait()


class _Outbox:
    def __init__(self) -> None:
        self.stream = _Stream()
        self.watched: list[dict[str, Any]] = []

    async def watch(self, pipeline: list[dict[str, Any]], **options: Any) -> _Stream:
        self.watched.append(options)
        return self.stream


class _Db:
    def __init__(self, client: Any = None) -> None:
        self.outbox = _Outbox()
        self.client = client

    def __getitem__(self, name: str) -> _Outbox:
        assert name == OUTBOX
        return self.outbox


async def test_an_idle_change_stream_waits_seconds_per_getmore_and_a_stop_ends_its_wait() -> None:
    """The getMore waits WATCH_AWAIT_SECONDS on the server (it answers at once when a row comes):
    about five times fewer round trips than one a second, and a stop does not wait it out."""
    db = _Db()
    relay = OutboxRelay(db, bootstrap="unused", service="watch-test")  # type: ignore[arg-type]
    watching = asyncio.create_task(relay.watch_inserts())
    await asyncio.wait_for(db.outbox.stream.waiting.wait(), timeout=10)
    assert db.outbox.watched == [{"max_await_time_ms": 5000}]
    assert outbox.WATCH_AWAIT_SECONDS >= 5
    await relay.stop()
    await asyncio.wait_for(watching, timeout=10)  # ends, not cancelled: the stop's own cancel
    assert db.outbox.stream.closed
    assert not watching.cancelled()


async def test_a_cancel_that_is_not_the_stops_still_cancels_the_watch() -> None:
    db = _Db()
    relay = OutboxRelay(db, bootstrap="unused", service="watch-test")  # type: ignore[arg-type]
    watching = asyncio.create_task(relay.watch_inserts())
    await asyncio.wait_for(db.outbox.stream.waiting.wait(), timeout=10)
    watching.cancel()
    done, _ = await asyncio.wait([watching], timeout=10)
    assert done
    assert watching.cancelled()


async def test_the_getmore_waits_within_the_clients_operation_timeout() -> None:
    """PyMongo applies the client's ``timeoutMS`` (the services' CRM_DB_DEADLINE_SECONDS, 5 s) to
    each getMore of the stream: waiting as long as that on the server, a quiet stream failed
    after it and stayed closed for ``retry_seconds``. The wait is kept within it."""
    client = SimpleNamespace(options=SimpleNamespace(timeout=5.0))
    db = _Db(client)
    relay = OutboxRelay(db, bootstrap="unused", service="watch-test")  # type: ignore[arg-type]
    watching = asyncio.create_task(relay.watch_inserts())
    await asyncio.wait_for(db.outbox.stream.waiting.wait(), timeout=10)
    assert db.outbox.watched == [{"max_await_time_ms": 4000}]
    await relay.stop()
    await asyncio.wait_for(watching, timeout=10)
    assert outbox.watch_await_ms(_Db(SimpleNamespace(options=SimpleNamespace(timeout=60.0)))) == 5000
    assert outbox.watch_await_ms(_Db(SimpleNamespace(options=SimpleNamespace(timeout=None)))) == 5000
