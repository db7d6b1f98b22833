"""A batch of lead-qualified handoffs stored together (group commit, issue 12), against the
real mongod: what the batch costs in round trips (MongoDB's profiler, no timing) and that
its effects are those of the handoffs one by one: one item per lead, the rotation kept,
a duplicate without a second effect, a poisoned record parked alone.

The records are handed to sales' own consumer handlers as one fetch would hand them (the
Kafka side is a stand-in recording dead letters and offset commits), so the batch is
exactly the one written here.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any, TypeAlias, cast

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from crm_contracts import Envelope, envelope_for, utcnow
from crm_contracts.events.common import SealedPerson
from crm_contracts.events.person_keys import LeadPersonKeyIssuedV1, LeadPersonKeyShreddedV1
from crm_contracts.topics import LEAD_QUALIFIED, LEADS_PERSON_KEYS
from crm_platform import consumer as consumer_module
from crm_platform import pseudonym, shredding
from crm_platform.consumer import ConsumerConfig, EventConsumer, Outcome
from crm_platform.mongo import Store
from crm_platform.pseudonym import email_hash
from crm_platform.testing import CommandNames, eventually
from prometheus_client import REGISTRY
from pymongo import AsyncMongoClient, UpdateOne
from sales import consumers
from sales import store as repo

pytestmark = pytest.mark.integration
Sales: TypeAlias = Any  # conftest.Sales
TP = TopicPartition(LEAD_QUALIFIED, 0)


class StandInKafka:
    def __init__(self) -> None:
        self.dead_letters: list[bytes] = []
        self.commits: list[dict[TopicPartition, int]] = []

    async def send_and_wait(self, topic: str, value: bytes, **_: Any) -> None:
        self.dead_letters.append(value)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))


class Recording(EventConsumer):
    outcomes: dict[int, str]

    async def on_outcome(self, record: Any, outcome: Outcome) -> None:
        self.outcomes[record.offset] = outcome.outcome


def _consumer(sales: Sales, handlers: dict[str, Any] | None = None) -> tuple[Recording, StandInKafka]:
    """Sales' consumer (its handlers opening sealed events, as the runtime wires them), or
    one with ``handlers`` (the key topics')."""
    kafka = StandInKafka()
    if handlers is None:
        subscription = consumers.subscription(sales.app.state.uow)
        handlers = {t: shredding.unsealing(h) for t, h in subscription.handlers.items()}
    consumer = Recording(
        ConsumerConfig(service="sales", group_id="sales-batch-test", topics=[LEAD_QUALIFIED], bootstrap="-"),
        sales.runtime.store,
        handlers,
    )
    consumer.outcomes = {}
    consumer.consumer = kafka
    consumer.producer = kafka
    return consumer, kafka


def _record(offset: int, value: bytes, topic: str = LEAD_QUALIFIED) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(topic, 0, offset, 0, 0, b"k", value, None, 1, len(value), ())


def _handoff(sales: Sales, make_qualified: Any, lead_id: str) -> Envelope:
    return envelope_for(make_qualified(lead_id), source="leads", correlation_id=f"journey-{lead_id}")


async def _profiled(
    sales: Sales,
    consumer: Recording,
    records: list[Any],
    tp: TopicPartition = TP,
    index_keys: Counter[tuple[str, str]] | None = None,
    updates: Counter[str] | None = None,
) -> Counter[tuple[str, str]]:
    """Hand ``records`` to the consumer as one fetch; the operations inside transactions by
    (operation, collection), into ``index_keys`` the index keys they inserted, and into
    ``updates`` the update statements by collection (a bulk write's statements are profiled
    without the transaction's number)."""
    db = sales.runtime.db
    await db.command({"profile": 2})
    try:
        await consumer._handle_partition(tp, records, {})
    finally:
        await db.command({"profile": 0})
    ops: Counter[tuple[str, str]] = Counter()
    async for op in db["system.profile"].find({"command.txnNumber": {"$exists": True}}):
        ops[(op["op"], op["ns"].split(".", 1)[1])] += 1
        if index_keys is not None:
            index_keys[(op["op"], op["ns"].split(".", 1)[1])] += op.get("keysInserted", 0)
    if updates is not None:
        async for op in db["system.profile"].find({"op": "update"}):
            updates[op["ns"].split(".", 1)[1]] += 1
    await db["system.profile"].drop()
    return ops


async def test_a_batch_of_handoffs_costs_one_read_one_counter_increment_and_one_insert(
    sales: Sales, make_qualified: Any
) -> None:
    reps = [sales.uid("b1"), sales.uid("b2"), sales.uid("b3")]
    await sales.set_roster(**dict.fromkeys(reps, True))
    leads = [sales.uid("batch-lead") for _ in range(12)]
    consumer, kafka = _consumer(sales)
    records = [_record(i, _handoff(sales, make_qualified, lead).to_bytes()) for i, lead in enumerate(leads)]

    ops = await _profiled(sales, consumer, records)

    assert consumer.outcomes == dict.fromkeys(range(12), "processed")
    assert ops[("query", repo.INBOX)] == 1, "the items of every lead of the batch in one query"
    assert ops[("insert", repo.INBOX)] == 1, "the batch's new items in one insert"
    counter = await sales.runtime.db[repo.COUNTERS].find_one({"_id": "round_robin"})
    items = await sales.runtime.db[repo.INBOX].find({"lead_id": {"$in": leads}}).to_list()
    assert len(items) == 12
    turns = sorted(item["assignment_history"][0]["counter"] for item in items)
    assert turns == list(range(counter["value"] - 12, counter["value"])), "12 turns, none skipped"
    owners = Counter(item["owner"] for item in items)
    assert sorted(owners.values()) == [4, 4, 4], "the rotation is that of one by one"
    assert kafka.dead_letters == []


async def test_a_batch_with_a_duplicate_and_a_poisoned_record_stores_every_other_handoff_once(
    sales: Sales, make_qualified: Any
) -> None:
    await sales.set_roster(**{sales.uid("p1"): True, sales.uid("p2"): True})
    leads = [sales.uid("mixed-lead") for _ in range(6)]
    envs = [_handoff(sales, make_qualified, lead) for lead in leads]
    consumer, kafka = _consumer(sales)
    await consumer._handle_partition(TP, [_record(0, envs[2].to_bytes())], {})  # stored before
    values = [e.to_bytes() for e in envs]
    values.insert(4, values[4].replace(b'"lead_id"', b'"lead_ident"'))  # fails its contract
    consumer.outcomes = {}
    offsets: dict[TopicPartition, int] = {}

    await consumer._handle_partition(TP, [_record(i, v) for i, v in enumerate(values)], offsets)

    assert consumer.outcomes == {
        0: "processed",
        1: "processed",
        2: "duplicate",
        3: "processed",
        4: "dead_lettered",
        5: "processed",
        6: "processed",
    }
    assert len(kafka.dead_letters) == 1
    assert b"lead_ident" in kafka.dead_letters[0]
    assert offsets == {TP: 7}
    for lead, env in zip(leads, envs, strict=True):
        item = await sales.inbox_item(lead)
        assert item is not None, lead
        assert item["id"] == str(env.event_id), lead
    doubled = await sales.runtime.db[repo.INBOX].count_documents({"lead_id": {"$in": leads}})
    assert doubled == len(leads), "one item per lead, the duplicate's included"


async def test_a_lead_handed_over_twice_in_one_batch_has_one_item_refreshed(
    sales: Sales, make_qualified: Any
) -> None:
    rep = sales.uid("twice")
    await sales.set_roster(**{rep: True})
    lead = sales.uid("twice-lead")
    first, second = (_handoff(sales, make_qualified, lead) for _ in range(2))
    consumer, _ = _consumer(sales)

    await consumer._handle_partition(TP, [_record(0, first.to_bytes()), _record(1, second.to_bytes())], {})

    assert consumer.outcomes == {0: "processed", 1: "processed"}
    assert await sales.runtime.db[repo.INBOX].count_documents({"lead_id": lead}) == 1
    item = await sales.inbox_item(lead)
    assert item["owner"] == rep
    assert item["handoff_number"] == 1


async def test_a_batch_of_key_records_is_stored_with_one_read_and_one_insert(
    sales: Sales, make_qualified: Any
) -> None:
    """The key consumer's batch: the held keys of every record read in one ``$in``, the new
    ones inserted together; a key sent twice is held once, and a key shredded later in the
    same batch ends as its shredding marker (never brought back)."""
    keys = [shredding.sealed_event(make_qualified(sales.uid("key-lead")), "leads")[1][0] for _ in range(6)]
    shredded = LeadPersonKeyShreddedV1(person_id=keys[5].person_id, shredded_at=keys[5].issued_at)
    events = [*keys, keys[0], shredded]
    values = [envelope_for(e, source="leads", correlation_id="keys").to_bytes() for e in events]
    consumer, _ = _consumer(sales, shredding.key_handlers())
    tp = TopicPartition(LEADS_PERSON_KEYS, 0)
    records = [_record(i, v, LEADS_PERSON_KEYS) for i, v in enumerate(values)]

    index_keys: Counter[tuple[str, str]] = Counter()
    ops = await _profiled(sales, consumer, records, tp, index_keys)

    assert consumer.outcomes == dict.fromkeys(range(8), "processed")
    # The batch's held keys in one query; the shredding record reads its key once more: found live,
    # it records a recheck of the key's hash (docs/governance.md, section 3).
    assert ops[("query", shredding.KEYS)] == 2, "the batch's held keys in one query, the shredded one's"
    assert ops[("insert", shredding.KEYS)] == 1, "the new keys in one insert"
    # _id, by_person_id and by_person_hash per held key: its v2 record's hash is stored with it
    # (a v1 record has none: no by_person_hash entry until an opened event teaches it one; an
    # empty list would be a key of its own, which the learning update then moves)
    assert index_keys[("insert", shredding.KEYS)] == 3 * 6, "each key's hash indexed as it is stored"
    ids = [k.person_id for k in keys]
    held = {
        d["person_id"]: d async for d in sales.runtime.db[shredding.KEYS].find({"person_id": {"$in": ids}})
    }
    assert len(held) == 6, "one copy per person, the repeated record's included"
    assert all(held[p].get("key") is not None for p in ids[:5])
    assert held[ids[5]].get("shredded") is True
    assert "key" not in held[ids[5]]


async def test_the_key_consumer_keeps_no_ledger_and_a_batch_delivered_again_changes_nothing(
    sales: Sales, make_qualified: Any
) -> None:
    """The runtime's key consumer keeps no processed-events ledger: its handlers are idempotent by
    their own writes (a held key is inserted only when none is held, a shredding marker is an
    upsert that keeps its first time), so the ledger's insert per key record (one per sealed
    handoff) and its lookup per batch are gone (thirteenth session, handoff). A batch delivered
    again (a crash before its offsets were committed) is processed with no second effect."""
    runtime_keys = sales.runtime.key_consumer
    assert runtime_keys is not None
    assert runtime_keys.config.ledger is False
    keys = [shredding.sealed_event(make_qualified(sales.uid("nl-lead")), "leads")[1][0] for _ in range(4)]
    shredded = LeadPersonKeyShreddedV1(person_id=keys[3].person_id, shredded_at=keys[3].issued_at)
    values = [envelope_for(e, source="leads", correlation_id="keys").to_bytes() for e in [*keys, shredded]]
    consumer = Recording(runtime_keys.config, sales.runtime.store, shredding.key_handlers())
    consumer.outcomes = {}
    kafka = StandInKafka()
    consumer.consumer = consumer.producer = kafka
    tp = TopicPartition(LEADS_PERSON_KEYS, 0)
    records = [_record(i, v, LEADS_PERSON_KEYS) for i, v in enumerate(values)]
    db, ids = sales.runtime.db, [k.person_id for k in keys]

    first = await _profiled(sales, consumer, records, tp)
    held = {d["_id"]: d async for d in db[shredding.KEYS].find({"person_id": {"$in": ids}})}
    consumer.outcomes = {}
    again = await _profiled(sales, consumer, records, tp)

    assert consumer.outcomes == dict.fromkeys(range(5), "processed"), "no duplicate outcome: no ledger"
    assert kafka.dead_letters == []
    assert first[("insert", "processed_events")] == again[("insert", "processed_events")] == 0
    assert again[("query", shredding.KEYS)] == 0, "no read: the insert where absent refuses held keys"
    assert {d["_id"]: d async for d in db[shredding.KEYS].find({"person_id": {"$in": ids}})} == held
    assert len(held) == 4
    assert sum(1 for d in held.values() if d.get("shredded")) == 1


async def test_a_batch_of_sealed_handoffs_reads_their_keys_in_one_query(
    sales: Sales, make_qualified: Any
) -> None:
    """Each sealed handoff opens with its held key (the plaintext reaches the inbox), for the
    whole batch with one read of the keys; the holder knows whose key it is (the e-mail's hash,
    for erasure) from the key record (v2), so opening writes nothing to the keys. With v1 key
    records (no hash) it learns the hashes as it opens: one write for the batch."""
    await sales.set_roster(**{sales.uid("k1"): True})
    await _sealed_batch(sales, make_qualified, with_hash=True)
    await _sealed_batch(sales, make_qualified, with_hash=False)


async def _sealed_batch(sales: Sales, make_qualified: Any, *, with_hash: bool) -> None:
    leads = [sales.uid("sealed-batch") for _ in range(8)]
    sealed = [shredding.sealed_event(make_qualified(lead), "leads") for lead in leads]
    key_events = [k if with_hash else _v1(k) for _, [k] in sealed]
    key_values = [envelope_for(k, source="leads", correlation_id="k").to_bytes() for k in key_events]
    key_consumer, _ = _consumer(sales, shredding.key_handlers())
    key_records = [_record(i, v, LEADS_PERSON_KEYS) for i, v in enumerate(key_values)]
    await key_consumer._handle_partition(TopicPartition(LEADS_PERSON_KEYS, 0), key_records, {})
    consumer, kafka = _consumer(sales)
    records = [
        _record(i, envelope_for(h, source="leads", correlation_id=lead).to_bytes())
        for i, (lead, (h, _)) in enumerate(zip(leads, sealed, strict=True))
    ]

    updates: Counter[str] = Counter()
    before = sum(pseudonym._keyed.cache_info()[:2])
    ops = await _profiled(sales, consumer, records, updates=updates)
    hashed = sum(pseudonym._keyed.cache_info()[:2]) - before

    assert consumer.outcomes == dict.fromkeys(range(8), "processed")
    # Each e-mail hashed once: as its key opens it, its inbox item's person hashes reuse it.
    assert hashed == 8, f"{hashed} e-mails hashed for 8 handoffs"
    assert kafka.dead_letters == []
    assert ops[("query", shredding.KEYS)] == 1, "the batch's keys in one query"
    if with_hash:
        assert updates[shredding.KEYS] == 0, "every copy stored with its hash: nothing to learn"
    else:
        assert updates[shredding.KEYS] == 8, "v1 records: each hash learned as its handoff opens"
    for lead, (_, [key]) in zip(leads, sealed, strict=True):
        item = await sales.inbox_item(lead)
        assert item["handoff"]["contact"]["email"] == f"{lead}@example.com"
        held = await sales.runtime.db[shredding.KEYS].find_one({"person_id": key.person_id})
        assert held["person_hashes"] == [email_hash(f"{lead}@example.com")]


def _v1(key: Any) -> LeadPersonKeyIssuedV1:
    """``key`` as a v1 record (no e-mail hash), as leads sent them before the sixteenth session."""
    return LeadPersonKeyIssuedV1(person_id=key.person_id, key=key.key, issued_at=key.issued_at)


async def test_a_sealed_handoff_alone_waits_for_its_key_before_beginning_its_transaction(
    sales: Sales, make_qualified: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sealed handoff fetched before its person key (the usual case at a low rate: the key
    consumer fetches on its own) waits for the key outside any transaction, like a batch does:
    its effect is stored in ONE transaction, not one begun, aborted for the missing key and
    begun again; woken by the key's storing, it goes to that transaction without asking for
    its keys again (a round trip on the handoff's latency). While it waits, the process's
    paced consumers end their empty-fetch pauses (``kafka.hurry_fetches``)."""
    checks: list[int] = []

    async def counted(db: Any, events: Any) -> int:
        checks.append(1)
        return await shredding.keys_missing(db, events)

    async def woken_only(_backoff: float) -> bool:  # no backoff running out: only the wake-up
        return await shredding.until_key_stored(60.0)

    hurried: list[int] = []
    monkeypatch.setattr(consumer_module, "keys_missing", counted)
    monkeypatch.setattr(consumer_module, "until_key_stored", woken_only)
    monkeypatch.setattr(consumer_module, "hurry_fetches", lambda: hurried.append(1))
    lead = sales.uid("alone")
    handoff, [key] = shredding.sealed_event(make_qualified(lead), "leads")
    env = envelope_for(handoff, source="leads", correlation_id=f"journey-{lead}")
    key_value = envelope_for(key, source="leads", correlation_id=f"journey-{lead}").to_bytes()
    consumer, kafka = _consumer(sales)
    consumer.config.holds_keys = True
    counting = CountingStore(sales.runtime.store)
    consumer.store = cast(Any, counting)
    keys, _ = _consumer(sales, shredding.key_handlers())
    keys.after_store = shredding.key_stored  # as the runtime wires the key consumer
    labels = {"service": "sales", "topic": LEAD_QUALIFIED}
    before = REGISTRY.get_sample_value("crm_person_key_waits_total", labels) or 0.0

    async def waiting() -> bool:
        return (REGISTRY.get_sample_value("crm_person_key_waits_total", labels) or 0.0) > before

    stored = asyncio.create_task(consumer._handle_partition(TP, [_record(0, env.to_bytes())], {}))
    await eventually(waiting, what="the handoff waiting for its key")
    key_tp = TopicPartition(LEADS_PERSON_KEYS, 0)
    await keys._handle_partition(key_tp, [_record(0, key_value, LEADS_PERSON_KEYS)], {})
    await asyncio.wait_for(stored, timeout=30)

    assert consumer.outcomes == {0: "processed"}
    assert kafka.dead_letters == []
    assert counting.transactions == 1, "one transaction: none begun before the key was held"
    assert len(checks) == 1, "its keys asked for once: the wake-up is the answer"
    assert hurried == [1], "the key consumer told to fetch now, not after its empty-fetch pause"
    item = await sales.inbox_item(lead)
    assert item is not None
    assert item["handoff"]["contact"]["email"] == f"{lead}@example.com"


class CountingStore:
    """The service's store, counting the transactions begun through it."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.transactions = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def transaction(self, work: Any) -> Any:
        self.transactions += 1
        return await self._store.transaction(work)


async def _fetched_ahead(
    sales: Sales, make_qualified: Any
) -> tuple[str, Any, Envelope, ConsumerRecord[bytes, bytes], Recording]:
    """A sealed handoff and its key, the key read by the key consumer's fetch (classified, as
    its records are before its transaction) but not stored: the key consumer itself."""
    lead = sales.uid("fetched")
    handoff, [key] = shredding.sealed_event(make_qualified(lead), "leads")
    env = envelope_for(handoff, source="leads", correlation_id=f"journey-{lead}")
    key_value = envelope_for(key, source="leads", correlation_id=lead).to_bytes()
    key_record = _record(0, key_value, LEADS_PERSON_KEYS)
    keys, _ = _consumer(sales, shredding.key_handlers())
    keys.after_store, keys.on_classified = shredding.key_stored, shredding.key_fetched  # as the runtime
    assert keys._prepare(key_record) is not None
    return lead, handoff, env, key_record, keys


class _KeyFetcher:
    """The key consumer's fetcher as the pacing knows it: an object it holds weakly."""


def _counting_key_checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """What each key check outside the transaction (``keys_missing``) answered, in order."""
    checks: list[int] = []

    async def counted(db: Any, events: Any) -> int:
        missing = await shredding.keys_missing(db, events)
        checks.append(missing)
        return missing

    monkeypatch.setattr(consumer_module, "keys_missing", counted)
    return checks


async def test_a_sealed_handoff_opens_with_the_key_its_process_fetched_before_that_key_is_stored(
    sales: Sales, make_qualified: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key's own transaction is not on the handoff's path: a key this process's key consumer
    has fetched opens the handoff at once (no key check, no wait); the hash learned is stored
    with the effect beside the key, not in it (the key consumer, storing the key afterwards,
    writes it alone: the two transactions never conflict), and an erasure request finds it."""
    checks = _counting_key_checks(monkeypatch)
    await sales.set_roster(**{sales.uid("f1"): True})
    lead, _, env, key_record, keys = await _fetched_ahead(sales, make_qualified)
    consumer, kafka = _consumer(sales)
    consumer.config.holds_keys = True
    consumer.config.key_wait_seconds = 0.5  # a handoff that waited for its key's storing: dead-lettered
    counting = CountingStore(sales.runtime.store)
    consumer.store = cast(Any, counting)

    await consumer._handle_partition(TP, [_record(0, env.to_bytes())], {})

    assert consumer.outcomes == {0: "processed"}
    assert kafka.dead_letters == []
    assert counting.transactions == 1
    assert checks == [0], "its key counted as had: no wait"
    item = await sales.inbox_item(lead)
    assert item["handoff"]["contact"]["email"] == f"{lead}@example.com"
    person_id = SealedPerson.model_validate(env.payload["sealed_contact"]).person_id
    db = sales.runtime.db
    assert await db[shredding.KEYS].find_one({"_id": f"held:leads:{person_id}"}) is None, "not stored yet"
    digest = email_hash(f"{lead}@example.com")
    learned = await db[shredding.KEYS].find_one({"_id": f"learned:held:leads:{person_id}"})
    assert learned["person_hashes"] == [digest]
    await keys._handle_partition(TopicPartition(LEADS_PERSON_KEYS, 0), [key_record], {})
    assert keys.outcomes == {0: "processed"}, "the key stored after the handoff, no conflict"
    held = await db[shredding.KEYS].find_one({"_id": f"held:leads:{person_id}"})
    assert held["key"] is not None
    assert await sales.runtime.store.transaction(lambda tx: shredding.shred(tx, [digest])) == 1
    held = await db[shredding.KEYS].find_one({"_id": f"held:leads:{person_id}"})
    assert held["shredded"] is True, "found by the hash the handoff learned"
    assert "key" not in held


async def test_an_erasure_finds_a_held_key_by_the_hash_its_record_carried_before_anything_opened(
    sales: Sales, make_qualified: Any
) -> None:
    """A key record (v2) names the person's e-mail hash, which the copy is stored with: an
    erasure request naming that hash shreds the copy although no handoff of the person has been
    opened yet (with v1 records only an opened handoff taught the holder whose key it was)."""
    lead = sales.uid("erase-unopened")
    key = shredding.sealed_event(make_qualified(lead), "leads")[1][0]
    keys, _ = _consumer(sales, shredding.key_handlers())
    value = envelope_for(key, source="leads", correlation_id="keys").to_bytes()
    await keys._handle_partition(
        TopicPartition(LEADS_PERSON_KEYS, 0), [_record(0, value, LEADS_PERSON_KEYS)], {}
    )
    digest = email_hash(f"{lead}@example.com")

    assert await sales.runtime.store.transaction(lambda tx: shredding.shred(tx, [digest])) == 1
    held = await sales.runtime.db[shredding.KEYS].find_one({"_id": f"held:leads:{key.person_id}"})
    assert held["shredded"] is True
    assert "key" not in held


async def test_an_erasure_before_the_fetched_key_is_stored_leaves_it_shredded(
    sales: Sales, make_qualified: Any
) -> None:
    """An erasure request naming a person whose handoff opened with a fetched key, before the
    key consumer stored that key: the key is withdrawn and a shredding marker left, which the
    key's storing keeps (never brought back), and a later handoff of the person opens erased."""
    await sales.set_roster(**{sales.uid("e1"): True})
    lead, handoff, env, key_record, keys = await _fetched_ahead(sales, make_qualified)
    consumer, _ = _consumer(sales)
    consumer.config.holds_keys = True
    await consumer._handle_partition(TP, [_record(0, env.to_bytes())], {})
    assert consumer.outcomes == {0: "processed"}
    digest = email_hash(f"{lead}@example.com")

    assert await sales.runtime.store.transaction(lambda tx: shredding.shred(tx, [digest])) == 1
    await keys._handle_partition(TopicPartition(LEADS_PERSON_KEYS, 0), [key_record], {})

    person_id = SealedPerson.model_validate(env.payload["sealed_contact"]).person_id
    db = sales.runtime.db
    held = await db[shredding.KEYS].find_one({"_id": f"held:leads:{person_id}"})
    assert held["shredded"] is True
    assert "key" not in held
    assert await db[shredding.KEYS].find_one({"_id": f"learned:held:leads:{person_id}"}) is None
    opened = await sales.runtime.store.transaction(lambda tx: shredding.open_event(tx, handoff))
    assert opened.contact.email != f"{lead}@example.com", "opens to erased stand-ins"


def test_a_key_shredded_in_a_fetch_is_withdrawn_and_not_brought_back_by_a_late_resend(
    make_qualified: Any,
) -> None:
    """A shredding record the key consumer fetched withdraws the fetched key, and the same key
    fetched again after it (a late re-send) stays withdrawn."""
    _, [key] = shredding.sealed_event(make_qualified("withdrawn"), "leads")
    issued = envelope_for(key, source="leads", correlation_id="k")
    shredded = LeadPersonKeyShreddedV1(person_id=key.person_id, shredded_at=key.issued_at)
    held_id = f"held:leads:{key.person_id}"
    shredding.key_fetched(issued, key)
    assert shredding._fetched_doc(held_id) is not None
    shredding.key_fetched(envelope_for(shredded, source="leads", correlation_id="k"), shredded)
    assert shredding._fetched_doc(held_id) is None
    shredding.key_fetched(issued, key)
    assert shredding._fetched_doc(held_id) is None


async def test_a_key_fetched_while_its_handoff_asks_for_it_is_not_waited_for(
    sales: Sales, make_qualified: Any
) -> None:
    """The key consumer fetches the key while the handoff's key check is at the database (the
    wake-up comes before anyone waits): the check counts it as had, so the handoff does not wait
    for a wake-up that already came."""
    lead = sales.uid("race")
    handoff, [key] = shredding.sealed_event(make_qualified(lead), "leads")
    issued = envelope_for(key, source="leads", correlation_id=lead)

    class FetchingDuringQuery:
        def __init__(self, db: Any) -> None:
            self.db = db

        def __getitem__(self, name: str) -> Any:
            shredding.key_fetched(issued, key)  # fetched as the query goes out
            return self.db[name]

    missing = await shredding.keys_missing(FetchingDuringQuery(sales.runtime.db), [handoff])
    assert missing == 0


async def test_a_key_record_alone_is_stored_with_one_upsert_and_no_read(
    sales: Sales, make_qualified: Any
) -> None:
    """A key record handled alone (the 25/s handoff's key: one record per fetch) is stored by
    one upsert that inserts it only when no copy is held, not a read of the held keys and an
    insert (fifteenth session, sales); a held key or a shredding marker is kept as it is."""
    lead = sales.uid("lone-key")
    key = shredding.sealed_event(make_qualified(lead), "leads")[1][0]
    shredded = LeadPersonKeyShreddedV1(person_id=key.person_id, shredded_at=key.issued_at)
    consumer, _ = _consumer(sales, shredding.key_handlers())
    tp = TopicPartition(LEADS_PERSON_KEYS, 0)
    db, held_id = sales.runtime.db, f"held:leads:{key.person_id}"

    async def alone(event: Any, offset: int) -> Counter[str]:
        record = _record(
            offset, envelope_for(event, source="leads", correlation_id="keys").to_bytes(), tp.topic
        )
        await db.command({"profile": 2})
        try:
            await consumer._handle_partition(tp, [record], {})
        finally:
            await db.command({"profile": 0})
        ops = Counter(
            [op["op"] async for op in db["system.profile"].find({"ns": f"{db.name}.{shredding.KEYS}"})]
        )
        await db["system.profile"].drop()
        return ops

    assert await alone(key, 0) == Counter({"update": 1}), "one upsert, no read (a query and an insert before)"
    held = await db[shredding.KEYS].find_one({"_id": held_id})
    assert held is not None
    assert (held["owner"], held["person_id"]) == ("leads", key.person_id)
    assert bytes(held["key"]) == shredding.decode_key(key.key)
    assert held["person_hashes"] == [email_hash(f"{lead}@example.com")], "the hash its v2 record carries"
    await alone(key, 1)
    assert await db[shredding.KEYS].find_one({"_id": held_id}) == held, "a key held already is left as it is"
    await alone(shredded, 2)
    await alone(key, 3)
    marker = await db[shredding.KEYS].find_one({"_id": held_id})
    assert marker is not None
    assert marker.get("shredded") is True
    assert "key" not in marker, "never brought back"
    assert consumer.outcomes == dict.fromkeys(range(4), "processed")


def _listened_key_consumer(
    sales: Sales, config: ConsumerConfig, commands: CommandNames
) -> tuple[Any, Recording, StandInKafka]:
    """A key consumer with the runtime's ``config`` on a client of its own whose commands
    ``commands`` records (the caller closes the client)."""
    client: Any = AsyncMongoClient(sales.settings.mongodb_uri, tz_aware=True, event_listeners=[commands])
    consumer = Recording(config, Store(client, sales.runtime.db.name, "sales"), shredding.key_handlers())
    consumer.outcomes = {}
    kafka = StandInKafka()
    consumer.consumer = consumer.producer = kafka
    return client, consumer, kafka


async def test_the_key_consumer_stores_a_record_alone_in_one_majority_write_without_a_transaction(
    sales: Sales, make_qualified: Any
) -> None:
    """A key record alone is the runtime key consumer's one upsert, sent without a transaction and
    acknowledged by the majority (a commit's durability): one mongod command, not the upsert and
    a ``commitTransaction`` (twentieth session, p99sales). Exactly once still: the same record
    delivered again (a crash after the write, before its offset was committed) leaves the held
    key as it was, and a key record after its shredding leaves the marker."""
    runtime_keys = sales.runtime.key_consumer
    assert runtime_keys is not None
    assert runtime_keys.config.one_write_alone is True
    commands = CommandNames()
    client, consumer, kafka = _listened_key_consumer(sales, runtime_keys.config, commands)
    lead = sales.uid("one-write")
    key = shredding.sealed_event(make_qualified(lead), "leads")[1][0]
    shredded = LeadPersonKeyShreddedV1(person_id=key.person_id, shredded_at=key.issued_at)
    tp, db, held_id = TopicPartition(LEADS_PERSON_KEYS, 0), sales.runtime.db, f"held:leads:{key.person_id}"

    async def alone(event: Any, offset: int) -> list[tuple[str, dict[str, Any]]]:
        value = envelope_for(event, source="leads", correlation_id="keys").to_bytes()
        commands.sent.clear()
        await consumer._handle_partition(tp, [_record(offset, value, tp.topic)], {})
        return commands.sent

    try:
        [(name, update)] = await alone(key, 0)
        held = await db[shredding.KEYS].find_one({"_id": held_id})
        assert held is not None
        assert bytes(held["key"]) == shredding.decode_key(key.key)
        assert (await alone(key, 1))[0][0] == "update"
        assert await db[shredding.KEYS].find_one({"_id": held_id}) == held, "delivered again: no change"
        # The shredding: the key read (live here: a recheck of its hash recorded), then the marker.
        assert [n for n, _ in await alone(shredded, 2)] == ["find", "update", "update"]
        await alone(key, 3)
    finally:
        await client.close()
    assert (name, update["update"]) == ("update", shredding.KEYS)
    assert "autocommit" not in update, "no transaction"
    assert "startTransaction" not in update
    assert update["writeConcern"] == {"w": "majority"}
    marker = await db[shredding.KEYS].find_one({"_id": held_id})
    assert marker is not None
    assert marker.get("shredded") is True
    assert "key" not in marker, "never brought back"
    assert consumer.outcomes == dict.fromkeys(range(4), "processed")
    assert kafka.dead_letters == []


async def test_the_key_consumer_stores_a_batch_in_one_unordered_insert_without_a_read_or_a_transaction(
    sales: Sales, make_qualified: Any
) -> None:
    """A batch of key records (the drain's: one per drained handoff) is the runtime key consumer's
    ONE unordered insert where absent, acknowledged by the majority, without a transaction and
    without reading the held keys first (a query, a commit and a transaction's Python per batch
    before: twenty-first session, drainkeys). Exactly once still: a key sent twice in the batch
    is held once, a key shredded before (its marker) or later in the same batch stays shredded,
    and the batch delivered again (a crash before its offsets were committed) changes nothing."""
    runtime_keys = sales.runtime.key_consumer
    assert runtime_keys is not None
    commands = CommandNames(shredding.KEYS)
    client, consumer, kafka = _listened_key_consumer(sales, runtime_keys.config, commands)
    keys = [shredding.sealed_event(make_qualified(sales.uid("bk-lead")), "leads")[1][0] for _ in range(6)]
    ids = [k.person_id for k in keys]
    db, tp = sales.runtime.db, TopicPartition(LEADS_PERSON_KEYS, 0)
    shredded_before = {"shredded": True, "shredded_at": utcnow()}
    marked = f"held:leads:{ids[4]}"
    await db[shredding.KEYS].insert_one({"_id": marked, "person_id": ids[4], **shredded_before})
    marker = await db[shredding.KEYS].find_one({"_id": marked})

    def shredded(i: int) -> LeadPersonKeyShreddedV1:
        return LeadPersonKeyShreddedV1(person_id=ids[i], shredded_at=keys[i].issued_at)

    async def batch(events: list[Any]) -> list[tuple[str, dict[str, Any]]]:
        values = [envelope_for(e, source="leads", correlation_id="keys").to_bytes() for e in events]
        commands.sent.clear()
        await consumer._handle_partition(tp, [_record(i, v, tp.topic) for i, v in enumerate(values)], {})
        return list(commands.sent)

    try:
        [(name, insert)] = await batch([*keys[:5], keys[0]])
        held = {d["_id"]: d async for d in db[shredding.KEYS].find({"person_id": {"$in": ids}})}
        again = await batch([*keys[:5], keys[0]])
        held_again = {d["_id"]: d async for d in db[shredding.KEYS].find({"person_id": {"$in": ids}})}
        mixed = await batch([keys[5], shredded(5), shredded(0), keys[0]])
    finally:
        await client.close()
    assert name == "insert"
    assert insert["ordered"] is False
    assert insert["writeConcern"] == {"w": "majority"}
    assert "autocommit" not in insert, "no transaction"
    assert "startTransaction" not in insert
    assert len(insert["documents"]) == 6, "every record's key, the held ones refused by mongod"
    assert [n for n, _ in again] == ["insert"], "delivered again: no read, no commit"
    assert held_again == held, "delivered again: no change"
    assert all(
        bytes(held[f"held:leads:{k.person_id}"]["key"]) == shredding.decode_key(k.key) for k in keys[:4]
    )
    assert held[marked] == marker, "a shredding marker is kept"
    # Each shredding reads its key first (live: a recheck of its hash, in erasure_rechecks).
    in_order = ["insert", "find", "update", "find", "update", "insert"]
    assert [n for n, _ in mixed] == in_order, "in offset order"
    after = {d["person_id"]: d async for d in db[shredding.KEYS].find({"person_id": {"$in": ids}})}
    assert after[ids[5]].get("shredded") is True, "shredded later in the batch"
    assert after[ids[0]].get("shredded") is True
    assert "key" not in after[ids[0]], "never brought back"
    assert "key" not in after[ids[5]]
    assert consumer.outcomes == dict.fromkeys(range(6), "processed")
    assert kafka.dead_letters == []


async def test_one_write_alone_refuses_what_needs_a_transaction(sales: Sales) -> None:
    """``Store.one_write`` refuses a work that emits an event or defers a write (they need the
    transaction), and a consumer without a transaction keeps no ledger and stores no receipt."""
    store = sales.runtime.store

    async def emitting(tx: Any) -> None:
        tx.emit(LeadPersonKeyShreddedV1(person_id="p-1", shredded_at=utcnow()))

    async def deferring(tx: Any) -> None:
        tx.insert_later(shredding.KEYS, {"_id": "never"})
        tx.update_later(shredding.KEYS, UpdateOne({"_id": "never"}, {"$set": {"x": 1}}, upsert=True))

    for work in (emitting, deferring):
        with pytest.raises(RuntimeError):
            await store.one_write(work)
    assert await sales.runtime.db[shredding.KEYS].find_one({"_id": "never"}) is None
    for ledger, department in ((True, None), (False, "sales")):
        config = ConsumerConfig("sales", "g", [LEADS_PERSON_KEYS], "-", department, ledger=ledger)
        config.one_write_alone = True
        with pytest.raises(ValueError):
            EventConsumer(config, store, {})


async def test_a_handoffs_key_check_waits_for_the_key_fetch_on_its_way_instead_of_asking_the_database(
    sales: Sales, make_qualified: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A live handoff's fetch ends the key consumer's pause, and its key (published with it) is on
    its way in that consumer's next fetch: the handoff's key check waits for that fetch
    (``kafka.records_fetch_pending``) and opens with the key as soon as it is read, without
    asking the database for its key first (a read that the key's arrival made moot most of the
    time) and without a person-key wait."""
    from crm_platform import kafka as kafka_module

    for name in ("_records_fetching", "_records_unread", "_records_paused", "_records_fetch_waiters"):
        monkeypatch.setattr(kafka_module, name, type(getattr(kafka_module, name))())
    checks = _counting_key_checks(monkeypatch)
    lead = sales.uid("on-its-way")
    handoff, [key] = shredding.sealed_event(make_qualified(lead), "leads")
    env = envelope_for(handoff, source="leads", correlation_id=f"journey-{lead}")
    issued = envelope_for(key, source="leads", correlation_id=f"journey-{lead}")
    consumer, kafka = _consumer(sales)
    consumer.config.holds_keys = True
    labels = {"service": "sales", "topic": LEAD_QUALIFIED}
    before = REGISTRY.get_sample_value("crm_person_key_waits_total", labels) or 0.0
    key_fetcher = _KeyFetcher()  # the key consumer, in its pause until the handoff's records are fetched
    paused = asyncio.create_task(kafka_module.pause_empty(3600, until_records=True, fetcher=key_fetcher))
    await asyncio.sleep(0)
    kafka_module.end_patient_pauses()  # the department's fetch brought the handoff
    await asyncio.wait_for(paused, 10)

    stored = asyncio.create_task(consumer._handle_partition(TP, [_record(0, env.to_bytes())], {}))

    async def waiting_for_the_fetch() -> bool:
        return bool(kafka_module._records_fetch_waiters)

    await eventually(waiting_for_the_fetch, what="the handoff waiting for the key fetch on its way")
    shredding.key_fetched(issued, key)  # the key consumer reads what its fetch brought
    kafka_module.records_fetch_read(key_fetcher)
    await asyncio.wait_for(stored, timeout=30)

    assert consumer.outcomes == {0: "processed"}
    assert kafka.dead_letters == []
    assert checks == [0], "the key counted as had: the database was not asked"
    assert (REGISTRY.get_sample_value("crm_person_key_waits_total", labels) or 0.0) == before
    item = await sales.inbox_item(lead)
    assert item is not None
    assert item["handoff"]["contact"]["email"] == f"{lead}@example.com"


async def _stored_with_its_held_key_answered_beside(
    sales: Sales, make_qualified: Any, monkeypatch: pytest.MonkeyPatch, lead: str, on_its_way: asyncio.Event
) -> list[bool]:
    """A sealed handoff of ``lead`` stored alone, its key held already; once its held key's read
    is answered, it waits (a 2 s deadline, not a measure) for ``on_its_way``: whether that was
    set meanwhile, per read of held keys."""
    handoff, [key] = shredding.sealed_event(make_qualified(lead), "leads")
    keys, _ = _consumer(sales, shredding.key_handlers())
    key_record = _record(
        0, envelope_for(key, source="leads", correlation_id=lead).to_bytes(), LEADS_PERSON_KEYS
    )
    await keys._handle_partition(TopicPartition(LEADS_PERSON_KEYS, 0), [key_record], {})  # held
    seen: list[bool] = []
    load_held = shredding._load_held

    async def reading_held(tx: Any, ids: Any) -> Any:
        held = await load_held(tx, ids)
        if ids:
            try:
                await asyncio.wait_for(on_its_way.wait(), 2)
                seen.append(True)
            except TimeoutError:
                seen.append(False)
        return held

    monkeypatch.setattr(shredding, "_load_held", reading_held)
    consumer, kafka = _consumer(sales)
    env = envelope_for(handoff, source="leads", correlation_id=f"journey-{lead}")
    await consumer._handle_partition(TP, [_record(0, env.to_bytes())], {})
    assert consumer.outcomes == {0: "processed"}
    assert kafka.dead_letters == []
    return seen


def _as_if_load_balanced(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client as if in load-balanced mode, where PyMongo pins a transaction to one
    connection: no two commands of a transaction may be on their way together
    (``crm_platform.mongo.commands_may_overlap``)."""
    import crm_platform.consumer
    import crm_platform.mongo

    for module in (crm_platform.consumer, crm_platform.mongo):
        monkeypatch.setattr(module, "commands_may_overlap", lambda session: False)


@pytest.mark.parametrize("load_balanced", [False, True])
async def test_a_handoffs_inbox_items_are_read_beside_its_held_key_not_after_it(
    sales: Sales, make_qualified: Any, monkeypatch: pytest.MonkeyPatch, load_balanced: bool
) -> None:
    """A sealed handoff's transaction reads its held key (the erasure's guard, in the snapshot)
    and the lead's inbox items: once the ledger insert has begun the transaction, the items'
    read is on its way while the held key's is (``sales.store.preload_handoff``,
    ``crm_platform.batch.Batch.preload``): one serial round trip fewer before it is stored.
    In load-balanced mode they go one after the other, as before."""
    if load_balanced:
        _as_if_load_balanced(monkeypatch)
    lead = sales.uid("side-by-side")
    items_read = asyncio.Event()
    load_items = repo.MongoInboxRepository._load_batch

    async def reading_items(self: Any, batch: Any) -> Any:
        items_read.set()
        return await load_items(self, batch)

    monkeypatch.setattr(repo.MongoInboxRepository, "_load_batch", reading_items)
    seen = await _stored_with_its_held_key_answered_beside(
        sales, make_qualified, monkeypatch, lead, items_read
    )

    assert seen == [not load_balanced], "the items' read beside the held key's only off load-balanced mode"
    item = await sales.inbox_item(lead)
    assert item is not None
    assert item["handoff"]["contact"]["email"] == f"{lead}@example.com"


@pytest.mark.parametrize("load_balanced", [False, True])
async def test_a_handoffs_writes_before_its_commit_go_beside_each_other(
    sales: Sales, make_qualified: Any, monkeypatch: pytest.MonkeyPatch, load_balanced: bool
) -> None:
    """A lone handoff opened with a fetched key (not stored yet) writes its inbox item and its
    learned hash, then its audit entry and its outbox row: once the transaction has begun, the
    learned hash (a platform collection, not audited) goes beside the item, and the outbox row
    beside the audit entry (``crm_platform.mongo.side_by_side``): two serial round trips fewer
    before the commit, so its partition's next handoff waits less. In load-balanced mode each
    write waits for the one before, as before."""
    from pymongo.asynchronous.collection import AsyncCollection

    if load_balanced:
        _as_if_load_balanced(monkeypatch)

    partners = {
        repo.INBOX: shredding.KEYS,
        shredding.KEYS: repo.INBOX,
        "audit_log": "outbox",
        "outbox": "audit_log",
    }
    started = {name: asyncio.Event() for name in partners}
    beside: dict[str, bool] = {}

    def watched(write: Any) -> Any:
        async def run(self: Any, *args: Any, **kwargs: Any) -> Any:
            if self.name in started and kwargs.get("session") is not None:
                started[self.name].set()
            result = await write(self, *args, **kwargs)
            if self.name in partners and kwargs.get("session") is not None and self.name not in beside:
                try:  # answered: was its partner on its way meanwhile? (a deadline, not a measure)
                    await asyncio.wait_for(started[partners[self.name]].wait(), 2)
                    beside[self.name] = True
                except TimeoutError:
                    beside[self.name] = False
            return result

        return run

    await sales.set_roster(**{sales.uid("rep"): True})  # the item is assigned: an event to emit
    monkeypatch.setattr(AsyncCollection, "insert_many", watched(AsyncCollection.insert_many))
    monkeypatch.setattr(AsyncCollection, "bulk_write", watched(AsyncCollection.bulk_write))
    lead, _, env, key_record, keys = await _fetched_ahead(sales, make_qualified)
    consumer, kafka = _consumer(sales)
    await consumer._handle_partition(TP, [_record(0, env.to_bytes())], {})

    assert consumer.outcomes == {0: "processed"}
    assert kafka.dead_letters == []
    assert set(beside) == set(partners)
    # One after the other, the first of each pair finds its partner not started when answered.
    assert all(beside.values()) is not load_balanced, f"side by side only off load-balanced mode: {beside}"
    item = await sales.inbox_item(lead)
    assert item["handoff"]["contact"]["email"] == f"{lead}@example.com"
    await keys._handle_partition(TopicPartition(LEADS_PERSON_KEYS, 0), [key_record], {})


async def test_a_lone_handoffs_round_robin_turn_is_reserved_beside_its_reads(
    sales: Sales, make_qualified: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lone handoff's round-robin turn (a ``findAndModify`` outside the transaction) is
    reserved beside its held key's and its inbox items' reads (``sales.store.preload_handoff``),
    not after them when the handler assigns the item: one serial round trip fewer before it is
    stored. The item gets the rep that turn names, as before."""
    from crm_platform.counters import RoundRobinCounter

    rep = sales.uid("turn-rep")
    await sales.set_roster(**{rep: True})
    lead = sales.uid("turn-beside")
    turn_taken = asyncio.Event()
    take_many = RoundRobinCounter.take_many

    async def taking(self: Any, db: Any, n: int) -> Any:
        turn_taken.set()
        return await take_many(self, db, n)

    monkeypatch.setattr(RoundRobinCounter, "take_many", taking)
    seen = await _stored_with_its_held_key_answered_beside(
        sales, make_qualified, monkeypatch, lead, turn_taken
    )

    assert seen == [True], "the turn was taken after the reads"
    item = await sales.inbox_item(lead)
    assert item is not None
    assert item["owner"] == rep


async def test_a_runs_event_ids_are_made_text_once_as_classified_not_per_step(
    sales: Sales, make_qualified: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A classified record carries its event id as text (``_Ready.event_id``): the run's ledger
    look-up, its split into seen and fresh and its ledger entries use it, where each made
    ``str(UUID)`` again (0.5-0.7 us each, two to four per record; twenty-second session,
    drainsales). A batch delivered again still finds its duplicates by it."""
    import uuid

    await sales.set_roster(**{sales.uid("t1"): True})
    envs = [_handoff(sales, make_qualified, sales.uid("text-lead")) for _ in range(4)]
    consumer, _ = _consumer(sales)
    records = [_record(i, env.to_bytes()) for i, env in enumerate(envs)]
    group = [consumer._prepare(r) for r in records]
    assert [r.event_id for r in group] == [str(env.event_id) for env in envs]  # type: ignore[union-attr]
    made: list[uuid.UUID] = []
    as_text = uuid.UUID.__str__

    def counted(self: uuid.UUID) -> str:
        made.append(self)
        return as_text(self)

    stored: list[list[Any]] = []

    async def store_run(tp: TopicPartition, run: list[Any], offsets: dict[TopicPartition, int]) -> bool:
        stored.append(run)
        return True

    monkeypatch.setattr(uuid.UUID, "__str__", counted)
    monkeypatch.setattr(consumer, "_store_run", store_run)
    assert await consumer._flush(TP, group, {}, 0)  # type: ignore[arg-type]
    entries = [consumer_module._ledger_doc(r) for r in group]  # type: ignore[arg-type]
    assert made == [], "no event id made text again by the run's look-up, split or entries"
    assert stored == [group]
    assert [e["_id"] for e in entries] == [str(env.event_id) for env in envs]
    monkeypatch.undo()

    await consumer._handle_partition(TP, records[:2], {})  # stored: the batch delivered again
    consumer.outcomes = {}
    await consumer._handle_partition(TP, records, {})
    assert consumer.outcomes == {0: "duplicate", 1: "duplicate", 2: "processed", 3: "processed"}


async def test_a_drained_handoffs_id_is_made_text_once_for_all_that_names_it(
    sales: Sales, make_qualified: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch's handoff names its event id, as text, in its ledger entry, its inbox item (id and
    handoff ids), its changes' audit actor, its receipt and the causation of the events it causes:
    the text made once, as the record is classified (``crm_contracts.uuids.text``), not once per
    place (0.5-0.7 us each; twenty-second session, drainsales)."""
    import dataclasses
    import uuid

    await sales.set_roster(**{sales.uid("once"): True})
    envs = [_handoff(sales, make_qualified, sales.uid("once-lead")) for _ in range(3)]
    ids = {env.event_id for env in envs}
    made: list[uuid.UUID] = []
    as_text = uuid.UUID.__str__

    def counted(self: uuid.UUID) -> str:
        if self in ids:
            made.append(self)
        return as_text(self)

    consumer, _ = _consumer(sales)
    consumer.config = dataclasses.replace(consumer.config, department="sales")  # its receipts too
    monkeypatch.setattr(uuid.UUID, "__str__", counted)
    await consumer._handle_partition(TP, [_record(i, env.to_bytes()) for i, env in enumerate(envs)], {})
    monkeypatch.undo()

    assert consumer.outcomes == dict.fromkeys(range(3), "processed")
    assert sorted(made) == sorted(ids), "each handoff's id made text once"
    db = sales.runtime.db
    for env in envs:
        text = str(env.event_id)
        assert await db["processed_events"].count_documents({"_id": text}) == 1
        item = await db[repo.INBOX].find_one({"_id": text})
        assert item is not None
        assert item["handoff_event_ids"] == [text]
        entry = await db["audit_log"].find_one({"record.type": repo.INBOX, "record.id": text})
        assert entry is not None
        assert entry["actor"]["event_id"] == str(envs[0].event_id)
        assert str(entry).count(f"'event_id': '{text}'") == 1, "the record's cause names its handoff"
        rows = await db["outbox"].find({"events.envelope.causation_id": text}).to_list()
        causes = [e for row in rows for e in row["events"] if e["envelope"]["causation_id"] == text]
        types = sorted(e["event_type"] for e in causes)
        assert types == ["handoff.received", "sales.lead_assigned"]
        receipt = next(e for e in causes if e["event_type"] == "handoff.received")
        assert receipt["envelope"]["payload"]["handoff_event_id"] == text
