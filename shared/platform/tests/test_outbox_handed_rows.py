"""The rows a commit hands its own process's relay (twenty-sixth session, relayhop): published
without the read of the pending rows that followed every commit (one mongod round trip on each
handoff's way), while nothing else can be pending; the relay still reads on start, after a
wake-up that wants a read (a row handed back), after a failure, and as a sweep.

The unit tests step ``CommittedRows`` by hand (a read that overlaps a hand-off, one that finds a
row before its hand-off). The integration tests run the real mongod and broker: each event on the
broker once, in commit order per key; rows committed by a process whose relay never sent them
(it died between the commit and the send) published by the next process's relay."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from crm_contracts import Envelope, envelope_for
from crm_contracts.events.leads import LeadStatusChangedV1
from crm_contracts.topics import LEADS_EVENTS
from crm_platform.mongo import OUTBOX, WRITER, CommittedRows, Store, Tx, connect, outbox_doc
from crm_platform.outbox import OutboxRelay
from crm_platform.testing import TopicReader, eventually


def _row(row_id: int, writer: str | None = None) -> dict[str, Any]:
    return {"_id": row_id, "event_id": f"e{row_id}", WRITER: writer}


def test_handed_rows_are_taken_in_commit_order_once_and_a_read_takes_over_those_before_it() -> None:
    rows = CommittedRows()
    assert rows.read_wanted, "a relay that starts reads first"
    covered = rows.reading()
    rows.read([], covered, drained=True)
    assert not rows.read_wanted
    rows.hand([_row(3), _row(1)])
    rows.hand([_row(2)])
    assert [r["_id"] for r in rows.take_handed(2)] == [3, 1]
    assert [r["_id"] for r in rows.take_handed(2)] == [2]
    assert rows.take_handed(2) == []
    rows.hand([_row(4), _row(5)])
    assert rows.reading() == {4, 5}, "handed before the read: the read's to publish"
    rows.read([_row(4)], {4, 5}, drained=True)
    assert rows.handed == 0
    assert not rows.read_wanted


def test_a_row_handed_while_a_read_runs_wants_the_next_read() -> None:
    rows = CommittedRows()
    covered = rows.reading()
    rows.hand([_row(1, rows.writer)])  # committed: before or after the read's snapshot?
    rows.read([], covered, drained=True)
    assert rows.read_wanted, "not found: it may have committed after the snapshot, or changed before it"
    rows.reading()
    assert rows.handed == 0, "the next read takes it over"


def test_a_row_a_read_published_before_its_hand_off_is_left_out_of_it() -> None:
    rows = CommittedRows()
    covered = rows.reading()
    rows.read([_row(7, rows.writer), _row(8, "another-process")], covered, drained=True)
    rows.hand([_row(7, rows.writer), _row(9, rows.writer)])
    assert [r["_id"] for r in rows.take_handed(10)] == [9], "7 went out with the read"
    rows.hand([_row(8)])
    assert rows.handed == 1, "only this process's rows are looked for"


def test_a_read_that_did_not_take_every_pending_row_wants_the_next_and_so_does_a_full_hand_off() -> None:
    rows = CommittedRows(limit=3)
    rows.read([], rows.reading(), drained=False)
    assert rows.read_wanted
    rows.read([], rows.reading(), drained=True)
    rows.hand([_row(i) for i in range(4)])
    assert (rows.handed, rows.read_wanted) == (0, True), "past the limit: dropped, pending in mongod"
    rows.read([], rows.reading(), drained=True)
    rows.want_read()
    assert rows.read_wanted
    rows.clear()
    assert rows.read_wanted, "a relay that lost its lease reads when it publishes again"


@pytest.fixture
async def store(mongodb_uri: str) -> AsyncIterator[Store]:
    client = connect(mongodb_uri, "handed-rows-test")
    store = Store(client, f"t_handed_{uuid.uuid4().hex[:8]}", "leads")
    await store.ensure_platform_indexes()
    try:
        yield store
    finally:
        await client.drop_database(store.db.name)
        await client.close()


class _Reads:
    """The relay's reads of the pending rows, counted."""

    def __init__(self, relay: OutboxRelay) -> None:
        self.count = 0
        read = relay._read_pending

        async def counted(heads_found: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
            rows = await read(heads_found)
            self.count += 1  # the read has ended (and the relay's hand-off state is settled)
            return rows

        relay._read_pending = counted  # type: ignore[method-assign]


def _relay(store: Store, bootstrap: str) -> OutboxRelay:
    """The store's relay as the runtime runs it (its commits hand it their rows), its poll and
    sweep an hour."""
    relay = OutboxRelay(
        store.db, bootstrap=bootstrap, service="handed-rows-test", poll_seconds=3600,
        committed=store.committed_rows, sweep_seconds=3600,
    )  # fmt: skip
    store.on_commit(relay.rows_handed)
    return relay


async def _commit(store: Store, lead: str, step: int) -> str:
    """One transaction's event for ``lead`` (its key); returns its event id."""
    ids: list[str] = []

    async def work(tx: Tx) -> None:
        ids.clear()
        event = LeadStatusChangedV1(lead_id=lead, status=f"step-{step}", source_channel="web")
        ids.append(str(tx.emit(event).event_id))

    await store.transaction(work)
    return ids[0]


async def _true(value: bool) -> bool:
    return value


async def _all_published(store: Store) -> bool:
    return await store.db[OUTBOX].count_documents({"published": False}) == 0


async def _on_the_broker(reader: TopicReader, event_ids: set[str]) -> list[Envelope]:
    """The records of ``event_ids`` the broker holds, in log order (per partition)."""
    await reader.read_to_end()
    return [env for env in reader.envelopes() if str(env.event_id) in event_ids]


def _per_key(envelopes: list[Envelope]) -> dict[str, list[str]]:
    keyed: dict[str, list[str]] = defaultdict(list)
    for env in envelopes:
        keyed[str(env.payload["lead_id"])].append(str(env.event_id))
    return keyed


async def _rounds(
    store: Store, leads: list[str], rounds: int, between: Callable[[int], None] | None = None
) -> dict[str, list[str]]:
    """``rounds`` rounds of one commit per lead, the leads' commits side by side; per lead, its
    event ids in commit order. ``between`` is called after each round."""
    committed: dict[str, list[str]] = defaultdict(list)
    for step in range(rounds):
        ids = await asyncio.gather(*(_commit(store, lead, step) for lead in leads))
        for lead, event_id in zip(leads, ids, strict=True):
            committed[lead].append(event_id)
        if between is not None:
            between(step)
    return committed


@asynccontextmanager
async def _publishing(store: Store, bootstrap: str) -> AsyncIterator[tuple[OutboxRelay, _Reads, TopicReader]]:
    """``store``'s relay running (its reads counted) and a reader of its topic, both stopped after."""
    relay = _relay(store, bootstrap)
    reads = _Reads(relay)
    reader = await TopicReader(bootstrap, LEADS_EVENTS).start()
    running = asyncio.create_task(relay.run())
    try:
        yield relay, reads, reader
    finally:
        await relay.stop()
        await asyncio.wait_for(running, timeout=15)
        await reader.stop()


async def _sent_once_in_commit_order(reader: TopicReader, committed: dict[str, list[str]]) -> None:
    wanted = {event_id for ids in committed.values() for event_id in ids}
    sent = await _on_the_broker(reader, wanted)
    assert Counter(str(env.event_id) for env in sent) == Counter(wanted), "each once"
    assert _per_key(sent) == committed, "in commit order per key"


@pytest.mark.integration
async def test_a_lone_writers_commits_are_sent_without_a_read_once_each_in_order_per_key(
    store: Store, kafka_bootstrap: str
) -> None:
    async with _publishing(store, kafka_bootstrap) as (_, reads, reader):
        leads = [f"lead-{uuid.uuid4().hex[:8]}" for _ in range(4)]
        await eventually(lambda: _true(reads.count == 1), what="the start's read")
        committed = await _rounds(store, leads, 10)
        await eventually(lambda: _all_published(store), what="every row published")
        assert reads.count == 1, "no read for a commit's rows"
        await _sent_once_in_commit_order(reader, committed)


@pytest.mark.integration
async def test_reads_wanted_between_commits_send_each_row_once_in_order_per_key(
    store: Store, kafka_bootstrap: str
) -> None:
    """Wake-ups that want a read (as a re-send's) between and beside the commits: the reads and
    the hand-offs overlap; no row goes out twice, none is left, the order per key holds."""
    async with _publishing(store, kafka_bootstrap) as (relay, reads, reader):
        leads = [f"lead-{uuid.uuid4().hex[:8]}" for _ in range(4)]

        def wake_to_read(step: int) -> None:
            if step % 2 == 0:
                relay.notify()

        committed = await _rounds(store, leads, 12, between=wake_to_read)
        await eventually(lambda: _all_published(store), what="every row published")
        assert reads.count > 1, "the wake-ups read"
        await _sent_once_in_commit_order(reader, committed)


@pytest.mark.integration
async def test_rows_a_dead_process_committed_and_never_sent_are_sent_by_the_next_ones_relay(
    store: Store, mongodb_uri: str, kafka_bootstrap: str
) -> None:
    """The process commits, its rows are handed to a relay that never sends them (it dies
    between the commit and the send): they are pending in mongod, and the relay of the process
    that comes next reads them on its start and sends each once, in order."""
    _relay(store, kafka_bootstrap)  # never run: the process dies before it sends
    leads = [f"lead-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    committed = await _rounds(store, leads, 3)
    assert store.committed_rows.handed == 9, "handed, not sent"
    client = connect(mongodb_uri, "handed-rows-next-process")
    after = Store(client, store.db.name, "leads")
    try:
        async with _publishing(after, kafka_bootstrap) as (_, _, reader):
            await eventually(lambda: _all_published(store), what="the dead process's rows published")
            await _sent_once_in_commit_order(reader, committed)
    finally:
        await client.close()


async def _pending(store: Store, row_id: Any) -> bool:
    row = await store.db[OUTBOX].find_one({"_id": row_id}, {"published": 1})
    return row is not None and not row["published"]


async def _published(store: Store, event_id: str) -> bool:
    row = await store.db[OUTBOX].find_one({"event_id": event_id}, {"published": 1})
    return bool(row and row["published"])


@pytest.mark.integration
async def test_the_sweep_reads_what_no_wake_up_announced_after_the_handed_rows_are_sent(
    store: Store, kafka_bootstrap: str
) -> None:
    """A row no commit here handed and no wake-up announced (another replica's first row while
    no change stream is open, a row a tool handed back) waits for the sweep: once the sweep is
    due, the next commit's rows are sent first, then the relay reads and sends that row."""
    relay = _relay(store, kafka_bootstrap)
    now = [0.0]
    relay.monotonic = lambda: now[0]
    reads = _Reads(relay)
    running = asyncio.create_task(relay.run())
    try:
        lead = f"lead-{uuid.uuid4().hex[:8]}"
        await eventually(lambda: _true(reads.count == 1), what="the start's read")
        elsewhere = LeadStatusChangedV1(lead_id=lead, status="elsewhere", source_channel="web")
        doc = outbox_doc(envelope_for(elsewhere, source="leads", correlation_id="another-process"))
        unannounced = (await store.db[OUTBOX].insert_one(doc)).inserted_id
        first = await _commit(store, lead, 0)
        await eventually(lambda: _published(store, first), what="the commit's row sent")
        assert await _pending(store, unannounced), "no read: nothing announced it"
        assert reads.count == 1
        now[0] += 3600  # the sweep is due
        last = await _commit(store, lead, 1)
        await eventually(lambda: _all_published(store), what="the unannounced row sent after the sweep")
        assert reads.count == 2, "the sweep's read"
        assert await _published(store, last)
    finally:
        await relay.stop()
        await asyncio.wait_for(running, timeout=15)
