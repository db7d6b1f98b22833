"""Group commit: a partition's batch is stored in one transaction, with the ledger per event.

Against the real mongod; the Kafka side is a stand-in (records are handed to the
consumer as a fetch would, dead letters and commits are recorded), so the test
sees exactly which transactions ran and which offsets were committed.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from crm_contracts import Envelope
from crm_platform import audit, metrics, receipts
from crm_platform.consumer import ConsumerConfig, DeadLetter, EventConsumer, Outcome
from crm_platform.mongo import OUTBOX, PROCESSED, Store, Tx, causation_var, connect, row_items
from pymongo import UpdateOne
from reliability.probe import count_effect, envelope, handoff, record_effect

pytestmark = pytest.mark.integration

TOPIC = "crm.test.group-commit"
TP = TopicPartition(TOPIC, 0)


class CountingStore(Store):
    """Counts committed transactions."""

    commits = 0

    async def transaction(self, work: Callable[[Tx], Awaitable[Any]]) -> Any:
        result = await super().transaction(work)
        self.commits += 1
        return result


class StandInKafka:
    """What the consumer asks of its Kafka clients: a DLQ send and offset commits."""

    def __init__(self) -> None:
        self.dead_letters: list[bytes] = []
        self.commits: list[dict[TopicPartition, int]] = []

    async def send_and_wait(self, topic: str, value: bytes, **_: Any) -> None:
        self.dead_letters.append(value)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))


class Recording(EventConsumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.outcomes: list[tuple[int, str]] = []

    async def on_outcome(self, record: Any, outcome: Outcome) -> None:
        self.outcomes.append((record.offset, outcome.outcome))


def _record(offset: int, value: bytes) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(TOPIC, 0, offset, 0, 0, b"k", value, None, 1, len(value), ())


@pytest.fixture
async def store(mongodb_uri: str) -> AsyncIterator[CountingStore]:
    client = connect(mongodb_uri, "group-commit-test")
    s = CountingStore(client, f"t_group_{uuid.uuid4().hex[:8]}", "reliability-test")
    try:
        yield s
    finally:
        await client.drop_database(s.db.name)
        await client.close()


def _consumer(store: Store, handler: Any = record_effect) -> tuple[Recording, StandInKafka]:
    kafka = StandInKafka()
    consumer = Recording(
        ConsumerConfig(service="rel-group", group_id="rel-group", topics=[TOPIC], bootstrap="unused"),
        store,
        {"lead.captured": handler},
    )
    consumer.consumer = kafka
    consumer.producer = kafka
    return consumer, kafka


async def _effects(store: Store) -> dict[str, int]:
    return {d["_id"]: d["count"] async for d in store.db["effects"].find()}


async def test_a_batch_of_one_partition_is_stored_in_one_transaction_in_order(
    store: CountingStore,
) -> None:
    envs = [envelope(f"lead-{i}", f"e{i}") for i in range(20)]
    seen: list[tuple[str, str | None]] = []

    async def handler(tx: Tx, event: Any, env: Envelope) -> None:
        cause = causation_var.get()
        seen.append((event.name, str(cause.event_id) if cause else None))
        await record_effect(tx, event, env)

    consumer, kafka = _consumer(store, handler)
    offsets: dict[TopicPartition, int] = {}
    await consumer._handle_partition(TP, [_record(i, e.to_bytes()) for i, e in enumerate(envs)], offsets)

    assert store.commits == 1, "one transaction for the whole batch"
    assert [name for name, _ in seen] == [f"e{i}" for i in range(20)], "handlers ran in offset order"
    assert [cause for _, cause in seen] == [str(e.event_id) for e in envs], "each with its own causation"
    assert await _effects(store) == {str(e.event_id): 1 for e in envs}
    assert await store.db[PROCESSED].count_documents({}) == 20, "one ledger entry per event"
    assert offsets == {TP: 20}
    assert consumer.outcomes == [(i, "processed") for i in range(20)]
    assert kafka.dead_letters == []


async def test_a_redelivered_batch_has_no_second_effect(store: CountingStore) -> None:
    envs = [envelope(f"lead-{i}", f"e{i}") for i in range(6)]
    consumer, _ = _consumer(store)
    # The first three were stored before a crash; the batch comes again with three more.
    await consumer._handle_partition(TP, [_record(i, e.to_bytes()) for i, e in enumerate(envs[:3])], {})
    offsets: dict[TopicPartition, int] = {}
    consumer.outcomes.clear()
    await consumer._handle_partition(TP, [_record(i, e.to_bytes()) for i, e in enumerate(envs)], offsets)

    assert await _effects(store) == {str(e.event_id): 1 for e in envs}, "exactly one effect each"
    assert consumer.outcomes == [(0, "duplicate"), (1, "duplicate"), (2, "duplicate")] + [
        (i, "processed") for i in range(3, 6)
    ]
    assert offsets == {TP: 6}


async def test_a_dead_letter_in_a_batch_stores_the_others_once_and_parks_only_it(
    store: CountingStore,
) -> None:
    envs = [envelope(f"lead-{i}", f"e{i}") for i in range(5)]

    async def handler(tx: Tx, event: Any, env: Envelope) -> None:
        if event.name == "e2":
            raise DeadLetter("unknown_lead", "no such lead")
        await record_effect(tx, event, env)

    consumer, kafka = _consumer(store, handler)
    values = [e.to_bytes() for e in envs]
    values.insert(3, b"not json")  # a malformed record between valid ones
    records = [_record(i, v) for i, v in enumerate(values)]
    offsets: dict[TopicPartition, int] = {}
    await consumer._handle_partition(TP, records, offsets)

    stored = await _effects(store)
    assert stored == {str(e.event_id): 1 for e in envs if e.payload["name"] != "e2"}
    assert len(kafka.dead_letters) == 2, "e2 (its handler's reason) and the malformed record"
    assert dict(consumer.outcomes) == {
        0: "processed",
        1: "processed",
        2: "dead_lettered",
        3: "dead_lettered",
        4: "processed",
        5: "processed",
    }
    # Each dead letter's offset is committed as soon as it is acknowledged.
    assert {TP: 3} in kafka.commits
    assert {TP: 4} in kafka.commits
    assert offsets == {TP: 6}


async def test_a_duplicate_in_the_middle_of_a_batch_leaves_the_others_in_one_transaction(
    store: CountingStore,
) -> None:
    envs = [envelope(f"lead-{i}", f"e{i}") for i in range(8)]
    consumer, _ = _consumer(store)
    await consumer._handle_partition(TP, [_record(3, envs[3].to_bytes())], {})  # stored before
    store.commits = 0
    consumer.outcomes.clear()
    offsets: dict[TopicPartition, int] = {}
    await consumer._handle_partition(TP, [_record(i, e.to_bytes()) for i, e in enumerate(envs)], offsets)

    assert store.commits == 1, "the ledger was asked first: the seven others in one transaction"
    assert await _effects(store) == {str(e.event_id): 1 for e in envs}
    assert dict(consumer.outcomes) == {i: "duplicate" if i == 3 else "processed" for i in range(8)}
    assert offsets == {TP: 8}


async def test_a_poisoned_event_in_the_middle_is_set_apart_and_the_others_stay_batched(
    store: CountingStore,
) -> None:
    envs = [envelope(f"lead-{i}", f"e{i}") for i in range(10)]
    ran: list[str] = []

    async def handler(tx: Tx, event: Any, env: Envelope) -> None:
        ran.append(event.name)
        if event.name == "e4":
            raise ValueError("a bug this event triggers")
        await record_effect(tx, event, env)

    consumer, kafka = _consumer(store, handler)
    offsets: dict[TopicPartition, int] = {}
    await consumer._handle_partition(TP, [_record(i, e.to_bytes()) for i, e in enumerate(envs)], offsets)

    assert store.commits == 2, "e0-e3 together, then e5-e9 together (not one transaction each)"
    assert await _effects(store) == {str(e.event_id): 1 for e in envs if e.payload["name"] != "e4"}
    assert len(kafka.dead_letters) == 1
    assert b'"e4"' in kafka.dead_letters[0]
    assert dict(consumer.outcomes) == {i: "dead_lettered" if i == 4 else "processed" for i in range(10)}
    assert {TP: 5} in kafka.commits, "the dead letter's offset committed once it was parked"
    assert offsets == {TP: 10}
    assert (ran.count("e0"), ran.count("e4"), ran.count("e9")) == (2, 2, 1), ran


async def test_handlers_see_the_batch_and_deferred_inserts_commit_with_it(store: CountingStore) -> None:
    envs = [envelope(f"lead-{i}", f"e{i}") for i in range(6)]
    loads: list[list[str]] = []

    async def handler(tx: Tx, event: Any, env: Envelope) -> None:
        assert tx.batch is not None
        assert tx.batch.events[tx.batch.position][1] is env, "position names the event being handled"

        async def load() -> list[str]:
            names = [str(getattr(e, "name", "")) for e, _ in tx.batch.ahead()] if tx.batch else []
            loads.append(names)
            return names

        assert await tx.batch.memo("test.names", load) == [f"e{i}" for i in range(6)]
        tx.insert_later("deferred", {"_id": str(env.event_id), "name": event.name})

    consumer, _ = _consumer(store, handler)
    await consumer._handle_partition(TP, [_record(i, e.to_bytes()) for i, e in enumerate(envs)], {})

    assert store.commits == 1
    assert loads == [[f"e{i}" for i in range(6)]], "loaded once for the whole batch"
    names = sorted([d["name"] async for d in store.db["deferred"].find()])
    assert names == [f"e{i}" for i in range(6)]
    audited = await store.db["audit_log"].find({"record.type": "deferred"}).to_list()
    assert len(audited) == 1, "the batch's deferred inserts: one audit entry"
    assert sorted(audited[0]["record"]["id"]) == sorted(str(e.event_id) for e in envs), "naming each record"


async def test_a_batchs_receipts_share_one_outbox_row_and_a_repeat_puts_back_only_its_own(
    store: CountingStore,
) -> None:
    """The events a batch emits (here each handoff's receipt) are ONE outbox row, in offset
    order (one insert, one mark when published); a copy of one handoff arriving later (the
    sender re-sent it) puts that handoff's receipt back alone, the same receipt event, and
    the batch's other events are not published again."""
    await receipts.ensure_indexes(store.db)
    envs = [handoff(f"lead-{i}") for i in range(5)]
    kafka = StandInKafka()
    config = ConsumerConfig(
        service="rel-group", group_id="rel-group", topics=[TOPIC], bootstrap="unused", department="sales"
    )
    consumer = Recording(config, store, {"lead.qualified": count_effect})
    consumer.consumer = kafka
    consumer.producer = kafka
    await consumer._handle_partition(TP, [_record(i, e.to_bytes()) for i, e in enumerate(envs)], {})

    rows = await store.db[OUTBOX].find().to_list()
    assert len(rows) == 1, "the batch's receipts in one row"
    handed = [item["envelope"]["payload"]["handoff_event_id"] for item in row_items(rows[0])]
    assert handed == [str(e.event_id) for e in envs], "in offset order"
    await store.db[OUTBOX].update_one({"_id": rows[0]["_id"]}, {"$set": {"published": True}})
    receipt_id = row_items(rows[0])[2]["event_id"]

    consumer.outcomes.clear()
    await consumer._handle_partition(TP, [_record(5, envs[2].to_bytes())], {})
    await consumer._handle_partition(TP, [_record(6, envs[2].to_bytes())], {})

    assert consumer.outcomes == [(5, "duplicate"), (6, "duplicate")]
    assert await _effects(store) == {str(e.event_id): 1 for e in envs}
    alone = await store.db[OUTBOX].find({"event_id": receipt_id}).to_list()
    assert len(alone) == 1, "the receipt put back once, as a row of its own"
    assert alone[0]["published"] is False
    assert alone[0]["envelope"] == row_items(rows[0])[2]["envelope"], "the same receipt event"
    batch_row = await store.db[OUTBOX].find_one({"_id": rows[0]["_id"]})
    assert batch_row is not None
    assert batch_row["published"] is True, "the batch's other receipts are not sent again"


async def test_a_stored_batch_looks_its_metric_children_up_once_per_event_type(
    store: CountingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each stored record still counts (crm_events_consumed, crm_event_processing_seconds), but
    the labelled children are looked up once per (topic, event type), not three times per record
    (about 1 us each: docs/performance.md, eleventh session, drain)."""
    consumer, _ = _consumer(store)
    first = [envelope(f"lead-{i}", f"m{i}") for i in range(5)]
    await consumer._handle_partition(TP, [_record(i, e.to_bytes()) for i, e in enumerate(first)], {})
    looked_up: list[tuple[str, ...]] = []
    for metric in (metrics.EVENTS_CONSUMED, metrics.PROCESSING_SECONDS, metrics.HANDOFF_TRANSPORT_LATENCY):
        real = metric.labels

        def counting(*labels: str, _real: Any = real) -> Any:
            looked_up.append(labels)
            return _real(*labels)

        monkeypatch.setattr(metric, "labels", counting)
    processed = metrics.EVENTS_CONSUMED.labels("rel-group", TOPIC, "lead.captured", "processed")
    looked_up.clear()
    before = processed._value.get()
    envs = [envelope(f"lead-{i}", f"n{i}") for i in range(20)]
    await consumer._handle_partition(TP, [_record(5 + i, e.to_bytes()) for i, e in enumerate(envs)], {})

    assert consumer.outcomes[-20:] == [(5 + i, "processed") for i in range(20)]
    assert processed._value.get() - before == 20, "every stored record counted"
    assert looked_up == [], "no labels() per record (40 for these 20 before)"


async def test_each_change_of_a_grouped_transaction_names_the_event_that_caused_it(
    store: CountingStore,
) -> None:
    """A group of events stored in ONE transaction: every change's audit entry names its own
    event (actor, operation, correlation id), not ``system:<service>`` (the transaction's
    context is taken before any event's): a direct write, a deferred insert written at the
    commit or inside a LATER event's handler (``flush_inserts``), a deferred update, and one
    record updated by two events (two entries). The deferred inserts stay one stored entry
    per flush (not one per event), read back as one entry per record with its own cause."""
    envs = [envelope(f"lead-{i}", f"e{i}") for i in range(6)]
    await audit.ensure_indexes(store.db)
    await store.db["tallies"].insert_one({"_id": "shared", "last": None})

    async def handler(tx: Tx, event: Any, env: Envelope) -> None:
        await tx.db["direct"].insert_one({"_id": str(env.event_id), "name": event.name}, session=tx.session)
        tx.insert_later("deferred", {"_id": str(env.event_id), "name": event.name})
        if event.name == "e3":
            await tx.flush_inserts("deferred")  # e0-e3's, written in e3's handler
        if event.name in ("e1", "e4"):  # the same record by two events: an entry each
            tx.update_later("tallies", UpdateOne({"_id": "shared"}, {"$set": {"last": event.name}}))

    consumer, _ = _consumer(store, handler)
    await consumer._handle_partition(TP, [_record(i, e.to_bytes()) for i, e in enumerate(envs)], {})
    assert store.commits == 1, "one grouped transaction"

    for collection in ("direct", "deferred"):
        for env in envs:
            [entry] = (await audit.history(store.db, collection, str(env.event_id), limit=5)).items
            assert _cause(entry) == _cause_of(env), (collection, env.payload["name"])
    stored = await store.db[audit.AUDIT_LOG].find({"record.type": "deferred"}).to_list()
    assert len(stored) == 2, "e0-e3 flushed in e3's handler, e4-e5 at the commit: an entry per flush"
    tallies = (await audit.history(store.db, "tallies", "shared", limit=5)).items
    assert [(_cause(e), e["changes"][0]["after"]) for e in reversed(tallies)] == [
        (_cause_of(envs[1]), "e1"),
        (_cause_of(envs[4]), "e4"),
    ]
    rows = [r async for r in audit.csv_rows(store.db, audit.Filters(record_type="deferred"))]
    column = audit.CSV_COLUMNS.index("correlation_id")
    assert sorted(r[column] for r in rows) == sorted(e.correlation_id for e in envs), "the export too"


def _cause(entry: dict[str, Any]) -> tuple[Any, ...]:
    actor = entry["actor"]
    return (actor["user_id"], actor.get("event_id"), actor.get("event_type"), entry["operation"],
            entry["correlation_id"])  # fmt: skip


def _cause_of(env: Envelope) -> tuple[Any, ...]:
    return (f"event:{env.source}", str(env.event_id), env.event_type, f"event {env.event_type} v1",
            env.correlation_id)  # fmt: skip
