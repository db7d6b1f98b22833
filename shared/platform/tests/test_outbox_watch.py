"""The outbox relay's change stream while idle: one getMore per WATCH_AWAIT_SECONDS, ended by a stop;
open only while another writer's rows are read."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from crm_platform import outbox
from crm_platform.mongo import OUTBOX, WRITER, CommittedRows
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


class _Getmores:
    """A change stream whose getMores answer what the test gives them (None: an empty one, as
    when the server's await ends), one at a time."""

    def __init__(self) -> None:
        self.answers: asyncio.Queue[Any] = asyncio.Queue()
        self.asked = 0
        self.closed = asyncio.Event()

    async def __aenter__(self) -> _Getmores:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.closed.set()

    async def try_next(self) -> Any:
        self.asked += 1
        return await self.answers.get()


class _Streams:
    """The outbox's ``watch``: a new stream each time one is opened."""

    def __init__(self) -> None:
        self.opened: list[_Getmores] = []
        self.one_open = asyncio.Event()

    async def watch(self, pipeline: list[dict[str, Any]], **options: Any) -> _Getmores:
        self.opened.append(_Getmores())
        self.one_open.set()
        return self.opened[-1]


async def _settled() -> None:
    """Let the watch task run until it waits (no time passes: the loop's ready tasks only)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_relay_that_reads_only_its_own_rows_opens_no_change_stream() -> None:
    """A lone replica's stream reported nothing (its own inserts are left out on the server), and
    every open stream's getMore is woken by every oplog write: mongod's scan of each entry for
    nothing. The stream opens when a read of the pending rows finds a row another process wrote,
    and closes once no read has found one for ``watch_kept_seconds`` (a getMore's end checks)."""
    rows = CommittedRows()
    streams = _Streams()
    clock = [1000.0]
    relay = OutboxRelay(
        _Collections(streams),  # type: ignore[arg-type]
        bootstrap="unused",
        service="watch-test",
        committed=rows,
        watch_kept_seconds=600,
    )
    relay.monotonic = lambda: clock[0]
    watching = asyncio.create_task(relay.watch_inserts())
    await _settled()
    assert streams.opened == [], "no stream before another writer's row was read"
    relay._note_writers([{"_id": 1, WRITER: rows.writer}])  # this process's own row
    await _settled()
    assert streams.opened == []

    relay._note_writers([{"_id": 2, WRITER: rows.writer}, {"_id": 3, WRITER: "another replica"}])
    await asyncio.wait_for(streams.one_open.wait(), timeout=10)
    first = streams.opened[0]
    assert relay.streaming
    clock[0] += 599
    await first.answers.put(None)  # an empty getMore inside the window: the stream stays open
    await _settled()
    assert first.asked == 2
    assert not first.closed.is_set()
    clock[0] += 2
    await first.answers.put(None)  # past it: closed
    await asyncio.wait_for(first.closed.wait(), timeout=10)
    await _settled()
    assert not relay.streaming
    assert len(streams.opened) == 1

    streams.one_open.clear()
    relay._note_writers([{"_id": 4}])  # a row no Store wrote (handed back from elsewhere)
    await asyncio.wait_for(streams.one_open.wait(), timeout=10)
    assert len(streams.opened) == 2
    await relay.stop()
    await asyncio.wait_for(watching, timeout=10)
    assert not watching.cancelled()


class _Collections:
    def __init__(self, streams: _Streams) -> None:
        self.streams = streams
        self.client = None

    def __getitem__(self, name: str) -> _Streams:
        assert name == OUTBOX
        return self.streams
