"""How often the outbox relay reads the pending rows to publish one commit (thirteenth session,
latency): once. It read them three times for a single handoff: the read that found the rows,
a second right after publishing them (finding none), and a third when the outbox's change
stream reported the insert its own process had committed (and had woken it for already).
Each read is a round trip on the service's loop and a query for mongod at 25 handoffs/s.

Against the real mongod and broker; the reads are counted, nothing is timed.

The relay's marks (sixteenth session, relay marks): written beside its loop, not on it. A row
committed while the relay wrote the previous rows' marks (a majority write, a journal wait)
waited for them before its own read; now the next publish goes on, the rows being marked left
out of its reads; a failed mark hands its rows back (published again, at least once); a row
whose publish failed is not overtaken by its key's later rows. There the broker is a stand-in
producer that records what it stores, in order, and fails a batch when told; the marks are
held by a wrapper around the outbox's ``bulk_write``."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from functools import partial
from types import SimpleNamespace
from typing import Any

import pytest
from crm_contracts import envelope_for
from crm_contracts.events.leads import LeadStatusChangedV1
from crm_platform.kafka import partition_for
from crm_platform.mongo import OUTBOX, CommittedRows, Store, Tx, connect, outbox_doc
from crm_platform.outbox import LEASE, OutboxRelay
from crm_platform.testing import eventually
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import AutoReconnect

pytestmark = pytest.mark.integration


def status_changed() -> LeadStatusChangedV1:
    lead_id = f"lead-{uuid.uuid4().hex[:8]}"
    return LeadStatusChangedV1(lead_id=lead_id, status="nurturing", source_channel="web")


@pytest.fixture
async def store(mongodb_uri: str) -> AsyncIterator[Store]:
    client = connect(mongodb_uri, "relay-reads-test")
    store = Store(client, f"t_relay_{uuid.uuid4().hex[:8]}", "leads")
    await store.ensure_platform_indexes()
    try:
        yield store
    finally:
        await client.drop_database(store.db.name)
        await client.close()


async def published(store: Store, row_id: Any) -> bool:
    row = await store.db[OUTBOX].find_one({"_id": row_id}, {"published": 1})
    return bool(row and row["published"])


async def inserted_by_another_replica(store: Store) -> Any:
    """A pending row as another replica's transaction stores it (no wake-up in this process)."""
    doc = outbox_doc(envelope_for(status_changed(), source="leads", correlation_id="other-replica"))
    return (await store.db[OUTBOX].insert_one(doc)).inserted_id


def relay_of(store: Store, bootstrap: str) -> OutboxRelay:
    """The store's relay as a service runs it (its committed rows, woken by its commits), its
    poll an hour."""
    relay = OutboxRelay(
        store.db, bootstrap=bootstrap, service="relay-reads-test", poll_seconds=3600,
        committed=store.committed_rows,
    )  # fmt: skip
    store.on_commit(relay.rows_handed)  # as the runtime: its commits hand it their rows
    return relay


async def streaming(relay: OutboxRelay) -> bool:
    return relay.streaming


async def test_a_commit_is_published_after_one_read_of_the_pending_rows(
    store: Store, kafka_bootstrap: str
) -> None:
    relay = relay_of(store, kafka_bootstrap)
    reads: list[int] = []
    read_pending = relay._pending_rows

    async def counted() -> list[dict[str, Any]]:
        reads.append(1)
        return await read_pending()

    relay._pending_rows = counted  # type: ignore[method-assign]
    # Another replica's row, found by the relay's first read: its change stream opens then.
    first = await inserted_by_another_replica(store)
    tasks = [asyncio.create_task(relay.run()), asyncio.create_task(relay.watch_inserts())]
    try:
        await eventually(lambda: published(store, first), what="another replica's row published")
        await eventually(lambda: streaming(relay), what="the change stream open")
        reads.clear()

        async def work(tx: Tx) -> None:
            tx.emit(status_changed())

        await store.transaction(work)  # wakes its own relay once committed
        # A row stored after it: its insert is reported after the commit's by the stream.
        last = await inserted_by_another_replica(store)
        await eventually(lambda: published(store, last), what="the next row published")
        assert len(reads) == 2, "one read for the commit, one for the row stored after it"
    finally:
        await relay.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=15)


async def test_the_change_stream_reports_other_writers_inserts_not_this_processs(
    store: Store, kafka_bootstrap: str
) -> None:
    """A row this process's transaction inserted wakes its relay through the commit
    (``Store.wake``); the outbox's change stream leaves it out on the server (its ``writer``), so
    the stream's getMore is not answered for it (one round trip a handoff in each sending
    service). Another writer's insert is reported as before."""
    relay = OutboxRelay(
        store.db, bootstrap=kafka_bootstrap, service="relay-reads-test", committed=store.committed_rows
    )
    reported: list[Any] = []
    woken_here = relay._woken_here

    def seen(change: Any) -> bool:
        reported.append(change["documentKey"]["_id"])
        return woken_here(change)

    relay._woken_here = seen  # type: ignore[method-assign]

    async def reported_now(row_id: Any) -> bool:
        return row_id in reported

    watching = asyncio.create_task(relay.watch_inserts())
    try:
        others: list[Any] = [await inserted_by_another_replica(store)]
        await relay._pending_rows()  # a read finds another writer's row: the stream opens

        async def stream_open() -> bool:
            others.append(await inserted_by_another_replica(store))
            return any(row_id in reported for row_id in others)

        await eventually(stream_open, what="another writer's insert reported")

        async def work(tx: Tx) -> None:
            tx.emit(status_changed())

        await store.transaction(work)
        ours = [row["_id"] async for row in store.db[OUTBOX].find({"_id": {"$nin": others}})]
        assert len(ours) == 1
        last = await inserted_by_another_replica(store)  # reported after the commit, if that was
        await eventually(lambda: reported_now(last), what="the next insert reported")
        assert ours[0] not in reported, "this process's own insert not reported"
        assert set(reported) <= {*others, last}
    finally:
        await relay.stop()
        await asyncio.wait_for(watching, timeout=15)


async def test_a_lone_writers_relay_opens_its_change_stream_only_for_another_writers_row(
    store: Store, kafka_bootstrap: str
) -> None:
    """With no other writer the stream reported nothing (this process's inserts are left out on
    the server) and cost mongod a scan of every oplog entry: it is not opened. Another replica's
    row is published by the poll (here: a read the test asks for), and the stream opens then; that
    replica's next row wakes the relay without a poll."""
    relay = relay_of(store, kafka_bootstrap)
    opened: list[int] = []
    watch = store.db[OUTBOX].watch

    async def counted_watch(*args: Any, **kwargs: Any) -> Any:
        opened.append(1)
        return await watch(*args, **kwargs)

    outbox = store.db[OUTBOX]
    outbox.watch = counted_watch  # type: ignore[method-assign]
    relay.db = _WithOutbox(store, outbox)  # type: ignore[assignment]
    tasks = [asyncio.create_task(relay.run()), asyncio.create_task(relay.watch_inserts())]
    try:

        async def work(tx: Tx) -> None:
            tx.emit(status_changed())

        await store.transaction(work)  # this process's own row: published, no stream
        ours = await store.db[OUTBOX].find_one({})
        assert ours is not None
        await eventually(lambda: published(store, ours["_id"]), what="this process's row published")
        assert opened == []
        assert not relay.streaming
        first = await inserted_by_another_replica(store)
        relay.notify()  # the poll's read (an hour here)
        await eventually(lambda: published(store, first), what="another replica's row published")
        await eventually(lambda: streaming(relay), what="the change stream open")
        last = await inserted_by_another_replica(store)  # no notify: the stream wakes the relay
        await eventually(lambda: published(store, last), what="the other replica's next row published")
        assert opened == [1]
    finally:
        await relay.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=15)


class _WithOutbox:
    """The store's database, with the outbox collection object the test wrapped."""

    def __init__(self, store: Store, outbox: Any) -> None:
        self.store, self.outbox, self.client = store, outbox, store.client

    def __getitem__(self, name: str) -> Any:
        return self.outbox if name == OUTBOX else self.store.db[name]


def test_an_insert_is_this_processs_once_and_only_if_it_committed() -> None:
    rows = CommittedRows(ids_limit=2)
    rows.add([{"_id": 1}, {"_id": 2}, {"_id": 3}])  # the oldest past the limit forgotten
    rows.discard([{"_id": 3}])  # an attempt that did not commit
    assert [rows.woken_here(i) for i in (1, 2, 3, 2)] == [False, True, False, False]


PARTITIONS = [0, 1, 2]


class _Builder:
    """A producer batch that keeps its records' event ids and keys."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str]] = []

    def append(self, *, timestamp: Any, key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> object:
        self.records.append((dict(headers)["event_id"].decode(), key.decode()))
        return object()  # it fits

    def close(self) -> None:
        pass


class _Broker:
    """The relay's producer: each batch stored (its records appended to ``stored``, in order)
    unless it holds a key in ``fail_keys`` (then the batch fails, once per key)."""

    def __init__(self) -> None:
        self.stored: list[str] = []
        self.keys: dict[str, str] = {}
        self.fail_keys: set[str] = set()
        self.offsets: dict[tuple[str, int], int] = {}

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def partitions_for(self, topic: str) -> set[int]:
        return set(PARTITIONS)

    def create_batch(self) -> _Builder:
        return _Builder()

    async def send_batch(self, builder: _Builder, topic: str, *, partition: int) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        failing = self.fail_keys & {key for _, key in builder.records}
        if failing:
            self.fail_keys -= failing
            future.set_exception(RuntimeError(f"the broker did not store {sorted(failing)}"))
            return future
        base = self.offsets.get((topic, partition), 0)
        self.offsets[(topic, partition)] = base + len(builder.records)
        for event_id, key in builder.records:
            self.stored.append(event_id)
            self.keys[event_id] = key
        future.set_result(SimpleNamespace(partition=partition, offset=base))
        return future


class _Marks:
    """Holds the relay's mark writes (the outbox's ``bulk_write`` without a session): each
    waits on a future in ``waiting`` until the test lets it write (``let_through``) or fail (``fail``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.waiting: list[asyncio.Future[None]] = []
        self.holding = True
        self.write_concerns: list[dict[str, Any]] = []  # each mark's, as sent
        original = AsyncCollection.bulk_write

        async def bulk_write(
            collection: AsyncCollection[Any], requests: Any, *args: Any, **kwargs: Any
        ) -> Any:
            if collection.name == OUTBOX and kwargs.get("session") is None:
                self.write_concerns.append(collection.write_concern.document)
            if collection.name == OUTBOX and kwargs.get("session") is None and self.holding:
                gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self.waiting.append(gate)
                await gate  # raises what the test set
            return await original(collection, requests, *args, **kwargs)

        monkeypatch.setattr(AsyncCollection, "bulk_write", bulk_write)

    def fail(self, index: int) -> None:
        self.waiting[index].set_exception(AutoReconnect("the mark's connection was lost"))

    def let_through(self) -> None:
        """Every held mark written, and the next ones not held."""
        self.holding = False
        for gate in self.waiting:
            if not gate.done():
                gate.set_result(None)


@pytest.fixture
async def relaying(store: Store, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[_Broker, _Marks]]:
    """A relay running on ``store`` (woken by its commits) with a stand-in broker, its marks held."""
    broker, marks = _Broker(), _Marks(monkeypatch)
    relay = OutboxRelay(
        store.db, bootstrap="unused", service="relay-marks-test", poll_seconds=3600,
        committed=store.committed_rows,
    )  # fmt: skip
    relay.new_producer = lambda: broker  # type: ignore[method-assign]
    store.on_commit(relay.rows_handed)  # as the runtime: its commits hand it their rows
    running = asyncio.create_task(relay.run())
    try:
        yield broker, marks
    finally:
        marks.let_through()
        await relay.stop()
        await asyncio.wait_for(running, timeout=15)


async def _emitted(store: Store, *leads: str) -> list[str]:
    """One transaction's events (a row each), one per lead in order: their event ids."""
    ids: list[str] = []

    async def work(tx: Tx) -> None:
        ids.clear()
        for lead in leads:
            event = LeadStatusChangedV1(lead_id=lead, status="nurturing", source_channel="web")
            ids.append(str(tx.emit(event).event_id))

    await store.transaction(work)
    return ids


async def _all_marked(store: Store, event_ids: list[str]) -> bool:
    marked = await store.db[OUTBOX].count_documents({"event_id": {"$in": event_ids}, "published": True})
    return marked == len(event_ids)


async def _first_held(store: Store, marks: _Marks, key: str) -> str:
    """A first row of ``key`` committed, published, its mark held: its event id."""
    [first] = await _emitted(store, key)
    await eventually(lambda: _true(len(marks.waiting) == 1), what="the first row's mark held")
    return first


async def test_the_next_row_is_published_while_the_previous_rows_marks_are_written(
    store: Store, relaying: tuple[_Broker, _Marks]
) -> None:
    """Without the marks in a task, the relay sits in the first mark's write and the second
    row, of the same key, waits for it; with them, each row is published once (the row being
    marked is not read again), in order, and at most two marks are in flight."""
    broker, marks = relaying
    first = await _first_held(store, marks, "lead-a")
    assert broker.stored == [first]
    [second] = await _emitted(store, "lead-a")
    await eventually(lambda: _true(second in broker.stored), what="the next row published during the mark")
    await eventually(lambda: _true(len(marks.waiting) == 2), what="its mark held too")
    [third] = await _emitted(store, "lead-a")
    await eventually(lambda: _true(third in broker.stored), what="a third row published")
    assert broker.stored == [first, second, third], "each row once, in order"
    assert len(marks.waiting) == 2, "the third mark waits: two in flight at most"
    assert not await store.db[OUTBOX].count_documents({"published": True})
    marks.let_through()
    await eventually(lambda: _all_marked(store, [first, second, third]), what="every row marked")
    assert broker.stored == [first, second, third]


async def test_a_failed_mark_hands_its_rows_back_to_be_published_again(
    store: Store, relaying: tuple[_Broker, _Marks]
) -> None:
    """At least once: the rows of a mark that failed are pending in mongod and read again,
    published again (after the later row published meanwhile; consumers drop the repeat by
    event id), and marked; the later row, marked, is not published again."""
    broker, marks = relaying
    first = await _first_held(store, marks, "lead-a")
    [second] = await _emitted(store, "lead-a")
    await eventually(lambda: _true(len(marks.waiting) == 2), what="the second row's mark held")
    marks.fail(0)
    await eventually(lambda: _true(broker.stored.count(first) == 2), what="the first row published again")
    marks.let_through()
    await eventually(lambda: _all_marked(store, [first, second]), what="both rows marked")
    assert broker.stored == [first, second, first]


async def test_a_row_whose_publish_failed_is_not_overtaken_while_marks_are_in_flight(
    store: Store, relaying: tuple[_Broker, _Marks]
) -> None:
    """Order per key: with the first row's mark in flight, the next row of its key fails at the
    broker; neither that row nor the rows read after it are marked, and the key's later row is
    published only after it. Every row ends marked; each key's rows first stored in order."""
    broker, marks = relaying
    key = "lead-a"
    partition = partition_for(key.encode(), PARTITIONS, PARTITIONS)
    other = next(  # a key of another partition: its batch is stored when key's fails
        lead for lead in (f"lead-{n}" for n in range(100))
        if partition_for(lead.encode(), PARTITIONS, PARTITIONS) != partition
    )  # fmt: skip
    first = await _first_held(store, marks, key)
    broker.fail_keys = {key}
    second, beside = await _emitted(store, key, other)  # one read: key's batch fails, other's is stored
    [third] = await _emitted(store, key)  # committed while the failed row waits for its retry
    await eventually(lambda: _true(second in broker.stored), what="the failed row published again")
    marks.let_through()
    rows = [first, second, beside, third]
    await eventually(lambda: _all_marked(store, rows), what="every row marked")
    assert broker.stored.count(first) == 1, "the row being marked is not read again"
    firsts = list(dict.fromkeys(broker.stored))
    assert [e for e in firsts if broker.keys[e] == key] == [first, second, third]
    assert broker.stored.index(beside) < broker.stored.index(second), "stored, not marked: after a failed row"
    assert broker.stored.count(beside) == 2, "published again after the failed row"


async def _true(value: bool) -> bool:
    return value


async def _in(row: str, stored: list[str]) -> bool:
    return row in stored


class _Gathering:
    """A relay whose marks gather for an hour (``marks_gather_seconds``), its producer a stand-in
    broker, and the size of each mark it writes (``writes``: the outbox's ``bulk_write``s
    without a session)."""

    def __init__(self, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
        self.writes: list[int] = []
        original = AsyncCollection.bulk_write

        async def bulk_write(
            collection: AsyncCollection[Any], requests: Any, *args: Any, **kwargs: Any
        ) -> Any:
            if collection.name == OUTBOX and kwargs.get("session") is None:
                self.writes.append(len(requests))
            return await original(collection, requests, *args, **kwargs)

        monkeypatch.setattr(AsyncCollection, "bulk_write", bulk_write)
        self.broker = _Broker()
        self.relay = OutboxRelay(
            store.db, bootstrap="unused", service="relay-marks-test", poll_seconds=3600,
            committed=store.committed_rows, marks_gather_seconds=3600,
        )  # fmt: skip
        self.relay.new_producer = lambda: self.broker  # type: ignore[method-assign]
        store.on_commit(self.relay.rows_handed)  # as the runtime


@pytest.fixture
async def gathering(store: Store, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[_Gathering]:
    """:class:`_Gathering`'s relay running until the test ends (then stopped: its marks written)."""
    relay = _Gathering(store, monkeypatch)
    running = asyncio.create_task(relay.relay.run())
    try:
        yield relay
    finally:
        await relay.relay.stop()
        await asyncio.wait_for(running, timeout=15)


async def test_the_marks_of_publishes_close_together_are_written_in_one_write(
    store: Store, gathering: _Gathering
) -> None:
    """A mark waits a while (``marks_gather_seconds``; an hour here) for the marks of the next
    publishes and is written with them: one ``bulk_write`` for two rows published one after the
    other (two without the wait); a stop writes it at once. Each row published once, in order."""
    broker = gathering.broker
    [first] = await _emitted(store, "lead-a")
    await eventually(lambda: _true(first in broker.stored), what="the first row published")
    [second] = await _emitted(store, "lead-a")
    await eventually(lambda: _true(second in broker.stored), what="the second row published")
    assert gathering.writes == [], "the first mark waits for the next publishes' marks"
    await gathering.relay.stop()
    await eventually(lambda: _all_marked(store, [first, second]), what="both rows marked at the stop")
    assert gathering.writes == [2], "both rows' marks in one write"
    assert broker.stored == [first, second]


async def test_a_gathered_mark_without_room_for_the_next_publish_is_written_at_once(
    store: Store, gathering: _Gathering
) -> None:
    """A trickle's publish that the gathering mark has no room for (``gather_below_events``; two
    events here) ends that mark's wait, and gathers anew: the first mark is written at once, not
    after its hour, and the third publish is not held by two marks waiting out their gathers
    (``marks_in_flight``). Each row published once, in order; the last mark at the stop."""
    broker, relay = gathering.broker, gathering.relay
    relay.gather_below_events = 2
    rows: list[str] = []
    for n in range(3):
        [row] = await _emitted(store, "lead-a")
        await eventually(partial(_in, row, broker.stored), what=f"row {n} published")
        rows.append(row)
    await eventually(lambda: _true(gathering.writes == [1, 1]), what="the two full gathers written")
    assert await _all_marked(store, rows[:2])
    await relay.stop()
    await eventually(lambda: _all_marked(store, rows), what="the last row marked at the stop")
    assert gathering.writes == [1, 1, 1]
    assert broker.stored == rows


async def test_a_relay_killed_while_its_mark_gathers_publishes_the_rows_again_after_its_restart(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relay that dies between a publish and its gathered mark (0.5 s in a service, an hour
    here) leaves the rows pending: the relay that takes over publishes them again, with the
    same event ids (consumers drop the repeat by event id), and marks them. Nothing written by
    the dead one's mark."""
    first = _Gathering(store, monkeypatch)
    running = asyncio.create_task(first.relay.run())
    [row] = await _emitted(store, "lead-a")
    await eventually(lambda: _true(row in first.broker.stored), what="the row published")
    running.cancel()  # killed: its gathered mark is never written
    with pytest.raises(asyncio.CancelledError):
        await running
    assert first.writes == []
    assert not await _all_marked(store, [row]), "still pending"
    await store.db[LEASE].delete_one({})  # the dead relay's lease ran out
    restarted = _Gathering(store, monkeypatch)
    restarted.relay.marks_gather_seconds = 0
    again = asyncio.create_task(restarted.relay.run())
    try:
        await eventually(lambda: _all_marked(store, [row]), what="the row published again and marked")
    finally:
        await restarted.relay.stop()
        await asyncio.wait_for(again, timeout=15)
    assert restarted.broker.stored == [row], "the same event id"


async def test_a_backlogs_publish_is_marked_at_once(store: Store, gathering: _Gathering) -> None:
    """Only a trickle's marks wait (a publish of fewer than ``gather_below_events`` events): a
    batch row of a hundred events is marked at once (a bulk capture ends when its events are
    all marked published), the gather an hour long notwithstanding."""
    ids: list[str] = []

    async def work(tx: Tx) -> None:
        ids.clear()
        for n in range(gathering.relay.gather_below_events * 2):
            event = LeadStatusChangedV1(lead_id=f"lead-{n}", status="nurturing", source_channel="web")
            ids.append(str(tx.emit(event, batched=True).event_id))

    await store.transaction(work)
    await eventually(lambda: _all_marked_row(store, ids[0]), what="the backlog's row marked at once")
    assert gathering.writes == [1]
    assert sorted(gathering.broker.stored) == sorted(ids)  # each once (in order per key: one each)


async def _all_marked_row(store: Store, first_event_id: str) -> bool:
    """Whether the batch row whose first event is ``first_event_id`` is marked published."""
    return bool(
        await store.db[OUTBOX].count_documents({"event_id": f"batch:{first_event_id}", "published": True})
    )


class _Counted:
    """The relay's change stream, its getMores that answered nothing counted."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.quiet = 0

    async def __aenter__(self) -> _Counted:
        await self.stream.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stream.__aexit__(*exc)

    async def try_next(self) -> Any:
        change = await self.stream.try_next()
        self.quiet += change is None
        return change


async def test_a_quiet_change_stream_outlives_the_clients_operation_timeout(mongodb_uri: str) -> None:
    """The services' client has an operation timeout (CRM_DB_DEADLINE_SECONDS), which PyMongo
    applies to each getMore of the stream. A getMore that waited on the server as long as the
    timeout failed: a stream that saw no change for that long closed for ``retry_seconds`` (30 s
    in the services), its relay left to the poll. Here the timeout is 1 s, the poll and the retry
    an hour: the stream answers empty getMores past the timeout and still wakes the relay for
    another replica's row (without the fix the first getMore fails and nothing wakes it)."""
    client = connect(mongodb_uri, "relay-watch-timeout-test", timeout_seconds=1.0)
    store = Store(client, f"t_relay_{uuid.uuid4().hex[:8]}", "leads")
    await store.ensure_platform_indexes()
    streams: list[_Counted] = []
    outbox = store.db[OUTBOX]
    watch = outbox.watch

    async def counted_watch(*args: Any, **kwargs: Any) -> _Counted:
        streams.append(_Counted(await watch(*args, **kwargs)))
        return streams[-1]

    class _Db:
        """The store's database, its outbox's change streams counted."""

        def __init__(self) -> None:
            self.client = client

        def __getitem__(self, name: str) -> Any:
            return outbox if name == OUTBOX else store.db[name]

    outbox.watch = counted_watch  # type: ignore[method-assign,assignment]
    relay = OutboxRelay(_Db(), bootstrap="unused", service="watch-timeout-test", poll_seconds=3600)  # type: ignore[arg-type]
    watching = asyncio.create_task(relay.watch_inserts(retry_seconds=3600))
    try:

        async def quiet_past_the_timeout() -> bool:
            return len(streams) == 1 and streams[0].quiet >= 2  # two waits of 0.8 s each: past 1 s

        await eventually(quiet_past_the_timeout, what="empty getMores past the client's timeout")
        assert not relay._wake.is_set()
        await inserted_by_another_replica(store)

        async def woken() -> bool:
            return relay._wake.is_set()

        await eventually(woken, what="the relay woken by the stream after a quiet spell")
        assert len(streams) == 1, "the stream was opened again"
    finally:
        await relay.stop()
        await asyncio.wait_for(watching, timeout=15)
        await client.drop_database(store.db.name)
        await client.close()


async def test_a_mark_is_acknowledged_once_applied_without_a_journal_wait_of_its_own(
    store: Store, relaying: tuple[_Broker, _Marks]
) -> None:
    """The relay's marks are written w=1 (``APPLIED``), not majority: a mark lost in a crash
    before mongod's next journal flush leaves its rows pending, published again (at least once,
    consumers drop the repeat by event id), as a crash before a gathered mark is written always
    did; the majority wait was a journal sync of its own for most lone handoffs at 25/s
    (twentieth session, p99leads). The row is marked published all the same."""
    broker, marks = relaying
    [event] = await _emitted(store, "lead-w")
    await eventually(lambda: _true(len(marks.waiting) == 1), what="its mark sent")
    marks.let_through()
    await eventually(lambda: _all_marked(store, [event]), what="the row marked")
    assert broker.stored == [event]
    assert marks.write_concerns == [{"w": 1}], "acknowledged once applied, no journal wait"
