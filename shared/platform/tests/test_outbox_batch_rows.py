"""A bulk path's events share one outbox row (``emit(batched=True)``); everything else is a row
per event, in emission order; a handoff shares a row only when its emitter asks (its
``handoffs_sent`` record names the row, where its re-send finds it)."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from crm_contracts import envelope_for, utcnow
from crm_contracts.events.common import Behaviour, Consent, Contact, ScoreReason
from crm_contracts.events.leads import LeadQualifiedV1, LeadStatusChangedV1
from crm_platform import audit, erasure, metrics, shredding
from crm_platform.kafka import partition_for
from crm_platform.mongo import (
    BATCH_EVENTS,
    HANDOFFS_SENT,
    OUTBOX,
    Store,
    Tx,
    commit_after_var,
    connect,
    outbox_doc,
    outbox_rows,
    row_items,
)
from crm_platform.ops import read_outbox
from crm_platform.outbox import (
    BACKLOG_PIPELINE,
    OutboxRelay,
    _positions,
    acknowledged,
    counted,
    pending_events,
)
from crm_platform.outbox_audit import LOG_OFFSET, LOG_PARTITION, published_events
from crm_platform.receipts import HandoffTracker
from crm_platform.settings import ServiceSettings
from crm_platform.testing import CommandNames
from pymongo import AsyncMongoClient


def item(n: int) -> dict[str, Any]:
    event = LeadStatusChangedV1(lead_id=f"lead-{n}", status="nurturing", source_channel="web")
    return outbox_doc(envelope_for(event, source="leads", correlation_id=f"lead-{n}"))


def test_neighbouring_batched_events_share_one_row_in_emission_order() -> None:
    items = [item(n) for n in range(6)]
    rows = outbox_rows(items, [False, True, True, True, False, True])
    assert row_items(rows[0]) == [items[0]]
    batch = rows[1]
    assert [i["event_id"] for i in batch[BATCH_EVENTS]] == [i["event_id"] for i in items[1:4]]
    assert batch["count"] == 3
    assert batch["published"] is False
    assert batch["event_id"] == f"batch:{items[1]['event_id']}"
    assert batch["created_at"] == items[1]["created_at"]
    assert all("published" not in i and "created_at" not in i for i in batch[BATCH_EVENTS])
    assert rows[2] is items[4], "a single event stays a row of its own"
    assert rows[3] is items[5], "a run of one batched event is a plain row"
    flat = [i["event_id"] for r in rows for i in row_items(r)]
    assert flat == [i["event_id"] for i in items], "every event once, in emission order"


def test_a_published_batch_rows_events_are_each_counted_once_by_topic_and_type() -> None:
    items = [item(n) for n in range(5)]
    rows = outbox_rows(items, [True, True, True, False, True])  # a batch row of 3, two plain rows
    topic, event_type = items[0]["topic"], items[0]["event_type"]
    service = f"svc-{uuid.uuid4().hex[:6]}"
    counted(service, rows)
    counted(service, rows[1:])
    child = metrics.EVENTS_PRODUCED.labels(service, topic, event_type)
    assert child._value.get() == 5 + 2


def test_a_handoff_shares_a_row_only_when_its_emitter_asks() -> None:
    """A tracker's batch of handoffs asks (``batched``; its re-send puts one back alone:
    tests/reliability/test_handoff_receipts.py); a consumer's batch (``batch_emits``) keeps
    each handoff a row of its own."""
    tx = Tx(None, None, "leads")  # type: ignore[arg-type]  # emit touches neither
    qualified = LeadQualifiedV1(
        lead_id=f"lead-{uuid.uuid4().hex[:6]}",
        contact=Contact(name="Ann", email="ann@example.com"),
        company="Co",
        score=50.0,
        threshold=40.0,
        score_reasons=[ScoreReason(behaviour=Behaviour.TRIAL_SIGNUP, count=1, points=50.0)],
        source_channel="web_form",
        behaviour_summary={Behaviour.TRIAL_SIGNUP: 1},
        consent=Consent(marketing_email=True),
        qualified_at=utcnow(),
    )
    status = LeadStatusChangedV1(lead_id="lead-1", status="nurturing", source_channel="web")
    tx.emit(status, batched=True)
    tx.emit(qualified, batched=True)
    tx.emit(qualified)
    tx.emit(status)
    assert tx.batched == [True, True, False, False]
    consumer = Tx(None, None, "sales")  # type: ignore[arg-type]
    consumer.batch_emits = True
    consumer.emit(status)
    consumer.emit(qualified)
    assert consumer.batched == [True, False]


def winning_plans(explained: Any) -> list[Any]:
    """Every ``winningPlan`` in an aggregate's explain (its sub-pipelines' too)."""
    if isinstance(explained, dict):
        found = [explained["winningPlan"]] if "winningPlan" in explained else []
        return found + [p for k, v in explained.items() if k != "winningPlan" for p in winning_plans(v)]
    if isinstance(explained, list):
        return [p for v in explained for p in winning_plans(v)]
    return []


@pytest.mark.integration
async def test_the_backlog_counts_a_batch_rows_events_without_fetching_rows(mongodb_uri: str) -> None:
    client = connect(mongodb_uri, "outbox-batch-test")
    store = Store(client, f"t_outbox_{uuid.uuid4().hex[:8]}", "leads")
    try:
        await store.ensure_platform_indexes()
        items = [item(n) for n in range(7)]
        rows = outbox_rows(items, [False, True, True, True, True, False, False])
        rows[-1]["published"] = True  # one already published: not waiting
        await store.db[OUTBOX].insert_many(rows)

        assert await pending_events(store.db) == 6, "1 + a batch row of 4 + 1"
        [backlog] = await asyncio.to_thread(read_outbox, mongodb_uri, [store.db.name])
        assert backlog.pending == 6
        backlog_read = {"aggregate": OUTBOX, "pipeline": BACKLOG_PIPELINE, "cursor": {}}
        explained = await store.db.command("explain", backlog_read, verbosity="queryPlanner")
        plan = str(winning_plans(explained))  # the count's and the union's
        assert "COUNT_SCAN" in plan
        assert "pending_batches" in plan
        assert "FETCH" not in plan, "counted and covered by the indexes: no row is read"
        await store.db[OUTBOX].delete_many({})
        assert await pending_events(store.db) == 0
    finally:
        await client.drop_database(store.db.name)
        await client.close()


@pytest.mark.integration
async def test_the_backlog_is_one_round_trip(mongodb_uri: str) -> None:
    """The relay samples the backlog every few seconds in every service, idle or not."""
    commands = CommandNames()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_uri, event_listeners=[commands])
    db = client[f"t_outbox_{uuid.uuid4().hex[:8]}"]
    try:
        rows = outbox_rows([item(n) for n in range(5)], [False, True, True, True, False])
        await db[OUTBOX].insert_many(rows)
        commands.names.clear()
        assert await pending_events(db) == 5
        assert commands.names == ["aggregate"], "the pending rows and the batch rows' counts together"
    finally:
        await client.drop_database(db.name)
        await client.close()


@pytest.mark.integration
async def test_erasure_scrubs_the_erased_records_events_inside_a_published_batch_row(
    mongodb_uri: str,
) -> None:
    client = connect(mongodb_uri, "outbox-batch-test")
    store = Store(client, f"t_outbox_{uuid.uuid4().hex[:8]}", "leads")
    try:
        items = []
        for who in ("ada", "bob"):
            event = LeadStatusChangedV1(
                lead_id=f"lead-{who}", status="nurturing", source_channel=f"{who}-channel"
            )
            items.append(outbox_doc(envelope_for(event, source="leads", correlation_id=f"lead-{who}")))
        [row] = outbox_rows(items, [True, True])
        row["published"] = True
        await store.db[OUTBOX].insert_one(row)

        async def erase(tx: Tx) -> None:
            await erasure._scrub_outbox(tx, ["lead-ada"], re.compile("ada-channel"))

        await store.transaction(erase)
        stored = await store.db[OUTBOX].find_one({"_id": row["_id"]})
        assert stored is not None
        ada, bob = (item["envelope"]["payload"]["source_channel"] for item in stored[BATCH_EVENTS])
        assert (ada, bob) == (audit.ERASED, "bob-channel"), "only the erased record's event"
    finally:
        await client.drop_database(store.db.name)
        await client.close()


def _qualified(lead_id: str, email: str) -> LeadQualifiedV1:
    return LeadQualifiedV1(
        lead_id=lead_id,
        contact=Contact(name="Ann", email=email),
        company="Co",
        score=50.0,
        threshold=40.0,
        score_reasons=[ScoreReason(behaviour=Behaviour.TRIAL_SIGNUP, count=1, points=50.0)],
        source_channel="web_form",
        behaviour_summary={Behaviour.TRIAL_SIGNUP: 1},
        consent=Consent(marketing_email=True),
        qualified_at=utcnow(),
    )


async def _lone_and_batched(store: Store, leads: list[str]) -> tuple[str, list[str]]:
    """Two transactions: the first lead's qualification alone (its own outbox row), the rest's
    in one batch row; their event ids."""

    async def alone(tx: Tx) -> str:
        return str(tx.emit(_qualified(leads[0], f"{leads[0]}@example.com")).event_id)

    async def batch(tx: Tx) -> list[str]:
        return [
            str(tx.emit(_qualified(lead, f"{lead}@example.com"), batched=True).event_id) for lead in leads[1:]
        ]

    return await store.transaction(alone), await store.transaction(batch)


@pytest.mark.integration
async def test_the_key_records_a_transaction_shares_go_ahead_of_its_handoffs_in_one_row(
    mongodb_uri: str,
) -> None:
    """Three leads qualified in one transaction (a tracker's batch of behaviours): their sealed
    handoffs are rows of their own, and the three people's key records ONE row stored before
    the first of them (the relay publishes in ``_id`` order: each key before the events
    sealed with it, so the holder seldom waits for one)."""
    client = connect(mongodb_uri, "outbox-batch-test")
    store = Store(client, f"t_outbox_{uuid.uuid4().hex[:8]}", "leads")
    leads = [f"lead-{uuid.uuid4().hex[:6]}" for _ in range(3)]
    try:
        await store.ensure_platform_indexes()

        async def work(tx: Tx) -> None:
            tx.emit(LeadStatusChangedV1(lead_id=leads[0], status="nurturing", source_channel="web"))
            for lead in leads:
                tx.emit(_qualified(lead, f"{lead}@example.com"))

        await store.transaction(work)
        rows = await store.db[OUTBOX].find().sort("_id", 1).to_list()
        kinds = [(row["event_type"], row.get("count", 1)) for row in rows]
        assert kinds == [
            ("lead.status_changed", 1),
            ("lead.person_key_issued", 3),
            ("lead.qualified", 1),
            ("lead.qualified", 1),
            ("lead.qualified", 1),
        ]
        keyed = [item["envelope"]["payload"]["person_id"] for item in row_items(rows[1])]
        sealed = [row["envelope"]["payload"]["sealed_contact"]["person_id"] for row in rows[2:]]
        assert keyed == sealed, "each handoff's key, in the handoffs' order"
    finally:
        await client.drop_database(store.db.name)
        await client.close()


@pytest.mark.integration
async def test_the_relay_publishes_the_batch_rows_committed_here_as_written_not_read_back(
    mongodb_uri: str,
) -> None:
    """A bulk path's batch row goes to this process's relay from memory (Store.committed_rows):
    the relay does not read hundreds of events back right after writing them, nor a row of
    person-key records (a tracker's batch of handoffs holds its keys). A row handed back to the
    relay (a field added), or whose key records erasure zeroed meanwhile, is read from mongod,
    and a row is taken from memory once."""
    client = connect(mongodb_uri, "outbox-batch-test")
    store = Store(client, f"t_outbox_{uuid.uuid4().hex[:8]}", "leads")
    relay = OutboxRelay(store.db, bootstrap="unused", service="leads", committed=store.committed_rows)
    leads = [f"lead-{uuid.uuid4().hex[:6]}" for _ in range(3)]
    try:
        await store.ensure_platform_indexes()

        async def work(tx: Tx) -> None:
            for lead in leads:
                tx.emit(
                    LeadStatusChangedV1(lead_id=lead, status="nurturing", source_channel="web"), batched=True
                )

        for _ in range(3):
            await store.transaction(work)
        first, handed_back, third = await store.db[OUTBOX].find().sort("_id", 1).to_list()
        assert len(store.committed_rows) == 3
        # What mongod holds now differs from what was written: only a read back would see it.
        for row in (first, handed_back, third):
            await store.db[OUTBOX].update_one(
                {"_id": row["_id"]}, {"$set": {f"{BATCH_EVENTS}.0.topic": "read-back"}}
            )
        await store.db[OUTBOX].update_one({"_id": handed_back["_id"]}, {"$set": {"republished": 1}})

        taken = await relay._pending_rows()
        assert [row["_id"] for row in taken] == [first["_id"], handed_back["_id"], third["_id"]]
        topics = [row[BATCH_EVENTS][0]["topic"] for row in taken]
        assert topics == [first[BATCH_EVENTS][0]["topic"], "read-back", third[BATCH_EVENTS][0]["topic"]]
        assert taken[2][BATCH_EVENTS] == third[BATCH_EVENTS], "as written"
        assert len(store.committed_rows) == 0, "each row taken from memory once"
        assert await relay._pending_rows() == [], "nothing handed since the read, no read wanted"
        relay.notify()  # a wake-up that wants a read (a row handed back, another writer's row)
        assert [r[BATCH_EVENTS][0]["topic"] for r in await relay._pending_rows()] == ["read-back"] * 3

        async def keyed(tx: Tx) -> None:
            tx.emit(_qualified(leads[0], f"{leads[0]}@example.com"))
            tx.emit(_qualified(leads[1], f"{leads[1]}@example.com"))

        await store.db[OUTBOX].update_many({}, {"$set": {"published": True}})  # the rows above: done
        await store.transaction(keyed)

        async def keyed_again(tx: Tx) -> None:  # two other people: a second row of key records
            tx.emit(_qualified(leads[2], f"{leads[2]}@example.com"))
            tx.emit(_qualified(leads[0], f"other-{leads[0]}@example.com"))

        await store.transaction(keyed_again)
        assert len(store.committed_rows) == 2, "rows of key records kept as written"
        waiting = {BATCH_EVENTS: {"$exists": True}, "published": False}
        zeroed, kept = await store.db[OUTBOX].find(waiting).sort("_id", 1).to_list()
        for row in (zeroed, kept):
            await store.db[OUTBOX].update_one(
                {"_id": row["_id"]}, {"$set": {f"{BATCH_EVENTS}.1.topic": "read-back"}}
            )
        erased = zeroed[BATCH_EVENTS][0]

        async def erase(tx: Tx) -> None:  # what erasure does to a waiting row holding the key
            await shredding._drop_key_rows(tx, erased["event_type"], erased["key"])

        await store.transaction(erase)
        taken = [row for row in await relay._pending_rows() if BATCH_EVENTS in row]
        assert [row["_id"] for row in taken] == [zeroed["_id"], kept["_id"]]
        assert shredding.KEYS_ZEROED in taken[0], "read back: erasure's change is in it"
        assert taken[0][BATCH_EVENTS][0]["envelope"]["payload"]["key"] == shredding.ZERO_KEY
        assert taken[0][BATCH_EVENTS][1]["topic"] == "read-back"
        assert taken[1][BATCH_EVENTS] == kept[BATCH_EVENTS] != [], "as written, not read back"
        assert taken[1][BATCH_EVENTS][1]["topic"] != "read-back"
        assert taken[1][BATCH_EVENTS][0]["envelope"]["payload"]["key"] != shredding.ZERO_KEY

        async def refuse() -> None:
            raise RuntimeError("aborted just before the commit")

        token = commit_after_var.set(refuse)
        try:
            with pytest.raises(RuntimeError):
                await store.transaction(work)
        finally:
            commit_after_var.reset(token)
        assert len(store.committed_rows) == 0, "an attempt that did not commit takes its rows back"
    finally:
        await client.drop_database(store.db.name)
        await client.close()


class _BatchingProducer:
    """What the relay uses of AIOKafkaProducer: its partitions, its batches; records offsets."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.sent: list[tuple[str, int, int]] = []  # (topic, partition, records) per batch
        self.offsets: dict[tuple[str, int], int] = {}

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2}

    def create_batch(self) -> Any:
        from aiokafka.producer.message_accumulator import BatchBuilder

        return BatchBuilder(self.batch_size, 0)

    async def send_batch(self, builder: Any, topic: str, *, partition: int) -> asyncio.Future[Any]:
        # aiokafka lets an open batch linger (linger_ms) before sending it; a closed one goes now.
        assert builder.closed(), "a batch handed to the producer is complete: closed, not lingering"
        records = builder.record_count()
        base = self.offsets.get((topic, partition), 0)
        self.offsets[(topic, partition)] = base + records
        self.sent.append((topic, partition, records))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(SimpleNamespace(partition=partition, offset=base))
        return future


@pytest.mark.parametrize("batch_size", [256 * 1024, 1000])
async def test_the_relay_hands_the_producer_one_batch_per_partition_in_the_events_order(
    batch_size: int,
) -> None:
    """Not one aiokafka send per event (its per-record path was most of the relay's CPU): the
    records of a publish go in producer batches, a partition's in the rows' order, each at
    the producer's own partition for its key, its position the batch's offset + its place."""
    producer = _BatchingProducer(batch_size)
    relay = OutboxRelay(None, bootstrap="unused", service="leads")  # type: ignore[arg-type]  # no database
    relay.producer = producer
    items = [item(n) for n in range(12)]
    rows = outbox_rows(items, [True] * 7 + [False] + [True] * 4)  # a row of 7, one of 1, one of 4
    placed = await relay._send(rows)
    stored = [[await acknowledged(record) for record in row] for row in placed]

    assert [len(row) for row in stored] == [7, 1, 4]
    flat = [position for row in stored for position in row]
    partitions = [partition_for(i["key"].encode(), [0, 1, 2], [0, 1, 2]) for i in items]
    assert [p.partition for p in flat] == partitions
    for partition in set(partitions):
        offsets = [p.offset for p in flat if p.partition == partition]
        assert offsets == list(range(len(offsets))), "a partition's events in order, each once"
    if batch_size > 100_000:
        assert sorted(p for _, p, _ in producer.sent) == sorted(set(partitions)), "one batch per partition"
    else:
        assert len(producer.sent) > len(set(partitions)), "a full batch is sent and the next one begun"
    assert sum(n for _, _, n in producer.sent) == 12


async def test_a_closed_batch_does_not_linger_in_aiokafka() -> None:
    """Why the relay closes its batches: aiokafka holds an open batch for ``linger_ms`` (2 ms,
    crm_platform.kafka.make_producer) before it sends it, a closed one it sends at once."""
    from aiokafka.producer.message_accumulator import BatchBuilder, MessageBatch
    from aiokafka.structs import TopicPartition

    builder = BatchBuilder(16384, 0)
    builder.append(timestamp=None, key=b"k", value=b"v", headers=[])
    batch = MessageBatch(TopicPartition("t", 0), builder, ttl=30, linger_time=60.0)
    assert batch.remaining_linger() is not None, "an open batch waits out linger_ms"
    builder.close()
    assert batch.remaining_linger() is None, "a closed batch is ready now"


@pytest.mark.parametrize("batch_size", [256 * 1024, 1000])
async def test_a_batch_row_is_audited_by_its_last_record_in_each_producer_batch(batch_size: int) -> None:
    """What the outbox audit reads of a published batch row: per producer batch its events went
    in, the last of them (``log_checks``), not every event; a single row is its one event."""
    producer = _BatchingProducer(batch_size)
    relay = OutboxRelay(None, bootstrap="unused", service="leads")  # type: ignore[arg-type]  # no database
    relay.producer = producer
    items = [item(n) for n in range(12)]
    rows = outbox_rows(items, [True] * 7 + [False] + [True] * 4)
    placed = await relay._send(rows)
    for row, records in zip(rows, placed, strict=True):
        metas = [await acknowledged(record) for record in records]
        row.update(_positions(row, metas, records))
        last = {id(record.slot): index for index, record in enumerate(records)}  # per producer batch
        checked = [
            (event["topic"], event[LOG_PARTITION], event[LOG_OFFSET], event["event_id"])
            for event in published_events(row)
        ]
        expected = [
            (row_items(row)[i]["topic"], metas[i].partition, metas[i].offset, row_items(row)[i]["event_id"])
            for i in sorted(last.values())
        ]
        assert checked == expected
    assert [len(published_events(row)) for row in rows] == [
        len({id(r.slot) for r in records}) for records in placed
    ]
    if batch_size > 100_000:
        assert len(published_events(rows[0])) < len(row_items(rows[0])), "fewer reads than events"


async def test_a_batch_rows_keys_are_hashed_together_each_at_the_producers_partition(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bulk capture's or an import batch's row: its keys' murmur2 computed together
    (``murmur2_many``), not one ``murmur2`` call per event (2.9 us each, every bulk lead), and
    each record still at the partition the producer's partitioner gives its key."""
    from crm_platform import kafka

    def lead_item(lead_id: str) -> dict[str, Any]:
        event = LeadStatusChangedV1(lead_id=lead_id, status="nurturing", source_channel="web")
        return outbox_doc(envelope_for(event, source="leads", correlation_id=lead_id))

    items = [lead_item(str(uuid.uuid4())) for _ in range(40)]
    rows = outbox_rows(items, [True] * 39 + [False])  # a batch row of 39, a row of one
    expected = [partition_for(i["key"].encode(), [0, 1, 2], [0, 1, 2]) for i in items]
    one_at_a_time = kafka.murmur2
    calls: list[bytes] = []

    def counted_murmur2(data: bytes) -> int:
        calls.append(data)
        return one_at_a_time(data)

    monkeypatch.setattr(kafka, "murmur2", counted_murmur2)
    relay = OutboxRelay(None, bootstrap="unused", service="leads")  # type: ignore[arg-type]  # no database
    producer = _BatchingProducer(256 * 1024)
    relay.producer = producer
    placed = await relay._send(rows)
    flat = [await acknowledged(record) for row in placed for record in row]

    assert [p.partition for p in flat] == expected
    assert calls == [items[-1]["key"].encode()], "only the lone row's key is hashed by itself"


def test_an_outbox_item_holds_its_envelopes_json_form_from_one_serializer_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every emitted event's item: the envelope's JSON form (what ``model_dump(mode="json")``
    gives, the relay's record and erasure's scrub read it) from its serializer called directly,
    not through ``model_dump``'s defaults (0.9 us per event), its id the dumped string."""
    from crm_contracts import Envelope
    from crm_contracts.events.leads import LeadCapturedV2

    captured = LeadCapturedV2(
        lead_id="lead-1",
        email="ann@example.com",
        name="Ann",
        company="Co",
        source_channel="web",
        campaign=None,
        consent=Consent(marketing_email=True, captured_at=utcnow()),
        merged=False,
        custom={},
    )
    sealed, _ = shredding.sealed_event(captured, "leads")
    envelopes = [
        envelope_for(sealed, source="leads", correlation_id="lead-1"),
        envelope_for(
            LeadStatusChangedV1(lead_id="lead-2", status="nurturing", source_channel="web"),
            source="leads",
            correlation_id="lead-2",
            causation_id=str(uuid.uuid4()),
        ),
    ]
    expected = [(str(env.event_id), env.model_dump(mode="json")) for env in envelopes]

    def through_model_dump(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("outbox_doc went through Envelope.model_dump")

    monkeypatch.setattr(Envelope, "model_dump", through_model_dump)
    items = [outbox_doc(env) for env in envelopes]
    assert [(i["event_id"], i["envelope"]) for i in items] == expected
    assert [i["key"] for i in items] == ["lead-1", "lead-2"]


@pytest.mark.integration
async def test_the_relay_records_each_published_handoff_before_its_mark_not_the_transaction(
    mongodb_uri: str,
) -> None:
    """A transaction stores its handoffs in the outbox only; the relay writes their
    ``handoffs_sent`` records once the broker has them, before their rows' mark (one round trip
    fewer in every handing-off transaction). A handoff in a batch row names the row; a record
    there already (a re-send published again) is left as it is, one a receipt made first keeps
    its receipt and gets the relay's fields, and the mark is still written."""
    client = connect(mongodb_uri, "outbox-handoffs-test")
    store = Store(client, f"t_outbox_{uuid.uuid4().hex[:8]}", "leads")
    relay = OutboxRelay(
        store.db, bootstrap="unused", service="leads", committed=store.committed_rows, marks_gather_seconds=0
    )
    relay.producer = _BatchingProducer(256 * 1024)
    relay.receipt_grace = timedelta(seconds=7)
    leads = [f"lead-{uuid.uuid4().hex[:6]}" for _ in range(3)]
    sent = store.db[HANDOFFS_SENT]
    try:
        await store.ensure_platform_indexes()

        lone, batched = await _lone_and_batched(store, leads)
        assert await sent.count_documents({}) == 0, "not written by the transactions"
        early = batched[0]  # its receipt came before the relay's record (HandoffTracker.mark_receipted)
        await sent.insert_one({"_id": early, "state": "receipted", "receipted_at": utcnow()})

        assert await relay.publish_pending() > 0
        await relay._marks_written()
        assert await store.db[OUTBOX].count_documents({"published": False}) == 0, "every row marked"
        records = {d["_id"]: d async for d in sent.find()}
        assert set(records) == {lone, *batched}
        assert (records[early]["state"], records[early]["key"]) == ("receipted", leads[1]), (
            "receipt kept, filled in"
        )
        batch_row = await store.db[OUTBOX].find_one({f"{BATCH_EVENTS}.event_id": batched[1]})
        qualified_row = await store.db[OUTBOX].find_one({"event_id": lone})
        assert batch_row is not None
        assert qualified_row is not None
        for event_id, row in ((lone, None), (batched[1], batch_row["event_id"])):
            record = records[event_id]
            assert record.get("row") == row
            assert (record["state"], record["handoff"], record["resends"]) == ("pending", "lead-qualified", 0)
            assert record["next_check_at"] == record["created_at"] + timedelta(seconds=7)
        assert records[lone]["created_at"] == qualified_row["created_at"], "when the handoff occurred"
        assert records[lone]["key"] == leads[0]

        # A re-send puts its row back (crm_platform.receipts): published again, its record kept.
        await sent.update_one({"_id": lone}, {"$set": {"resends": 1}})
        await store.db[OUTBOX].update_one({"event_id": lone}, {"$set": {"published": False}})
        relay.notify()  # as the re-send wakes it (HandoffTracker.wake_relay): read
        assert await relay.publish_pending() == 1
        await relay._marks_written()
        assert await sent.count_documents({"_id": lone, "resends": 1}) == 1
        assert await store.db[OUTBOX].count_documents({"event_id": lone, "published": True}) == 1
    finally:
        await client.drop_database(store.db.name)
        await client.close()


@pytest.mark.integration
async def test_a_receipt_that_comes_while_the_marks_gather_leaves_the_relays_record_whole(
    mongodb_uri: str,
) -> None:
    """The relay writes a handoff's ``handoffs_sent`` record with its gathered mark, after the
    publish: the receiver's receipt often comes first (``HandoffTracker.mark_receipted`` makes the
    record, receipted). The relay's record then fills in what it describes (handoff, event type,
    key, when it occurred, re-sends, next check, its batch row) and leaves the receipt as it is;
    a lone handoff's and a batch row's alike. Without: the receipted record had only its state."""
    settings = ServiceSettings.model_validate(
        {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "MONGODB_URI": mongodb_uri, "CRM_SERVICE_NAME": "leads"}
    )
    client = connect(mongodb_uri, "outbox-handoffs-test")
    store = Store(client, f"t_outbox_{uuid.uuid4().hex[:8]}", "leads")
    relay = OutboxRelay(
        store.db,
        bootstrap="unused",
        service="leads",
        committed=store.committed_rows,
        marks_gather_seconds=3600,
    )
    relay.producer = _BatchingProducer(256 * 1024)
    relay.receipt_grace = timedelta(seconds=7)
    tracker = HandoffTracker(store, settings, department="marketing", wake_relay=lambda: None)
    leads = [f"lead-{uuid.uuid4().hex[:6]}" for _ in range(3)]
    sent = store.db[HANDOFFS_SENT]
    try:
        await store.ensure_platform_indexes()

        lone, batched = await _lone_and_batched(store, leads)
        assert await relay.publish_pending() > 0
        assert await sent.count_documents({}) == 0, "the mark (and the records) still gathering"
        assert await tracker.mark_receipted([lone, batched[0]]) == 2, "receipts before the records"
        receipted_at = {d["_id"]: d["receipted_at"] async for d in sent.find()}
        await relay.stop()  # the gathered mark written at once
        await relay._marks_written()
        assert await store.db[OUTBOX].count_documents({"published": False}) == 0, "every row marked"
        records = {d["_id"]: d async for d in sent.find()}
        batch_row = await store.db[OUTBOX].find_one({f"{BATCH_EVENTS}.event_id": batched[0]})
        assert batch_row is not None
        for event_id, key, row in ((lone, leads[0], None), (batched[0], leads[1], batch_row["event_id"])):
            record = records[event_id]
            assert (record["state"], record["receipted_at"]) == ("receipted", receipted_at[event_id])
            assert (record["handoff"], record["event_type"], record["key"]) == (
                "lead-qualified", "lead.qualified", key,
            )  # fmt: skip
            assert (record["resends"], record.get("row")) == (0, row)
            assert record["next_check_at"] == record["created_at"] + timedelta(seconds=7)
        assert records[batched[1]]["state"] == "pending", "no receipt yet: recorded pending"
        assert await tracker.mark_receipted([lone]) == 0, "receipted once"
    finally:
        await client.drop_database(store.db.name)
        await client.close()


@pytest.mark.integration
@pytest.mark.parametrize(("handoffs", "requests"), [(3, ["update"]), (60, ["insert", "update"])])
async def test_a_trickles_handoff_records_are_one_request_of_upserts_a_backlogs_inserted_then_filled_in(
    mongodb_uri: str, handoffs: int, requests: list[str]
) -> None:
    """The relay's ``handoffs_sent`` records: a trickle's few (fewer than ``gather_below_events``)
    as upserts, one request; a backlog's inserted (an ``insert_many`` is a few storage
    transactions, an upsert one each), then only those whose id a receipt took filled in. Either
    way every record ends with the relay's fields and the receipts kept."""
    commands = CommandNames(HANDOFFS_SENT)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        mongodb_uri, event_listeners=[commands], tz_aware=True
    )
    db = client[f"t_outbox_{uuid.uuid4().hex[:8]}"]
    relay = OutboxRelay(db, bootstrap="unused", service="leads")
    envelopes = [
        envelope_for(
            _qualified(f"lead-{n}", f"lead-{n}@example.com"), source="leads", correlation_id=f"lead-{n}"
        )
        for n in range(handoffs)
    ]
    rows = outbox_rows([outbox_doc(env) for env in envelopes], [handoffs > 1] * handoffs)
    early = [str(env.event_id) for env in envelopes[1:3]]
    try:
        receipted_at = utcnow().replace(microsecond=0)
        await db[HANDOFFS_SENT].insert_many(
            [{"_id": i, "state": "receipted", "receipted_at": receipted_at} for i in early]
        )
        commands.names.clear()
        await relay._track_handoffs(rows)
        assert commands.names == requests
        records = {d["_id"]: d async for d in db[HANDOFFS_SENT].find()}
        assert len(records) == handoffs
        for n, env in enumerate(envelopes):
            record = records[str(env.event_id)]
            assert (record["handoff"], record["key"], record["resends"]) == ("lead-qualified", f"lead-{n}", 0)
            state = ("receipted", receipted_at) if str(env.event_id) in early else ("pending", None)
            assert (record["state"], record.get("receipted_at")) == state
    finally:
        await client.drop_database(db.name)
        await client.close()
