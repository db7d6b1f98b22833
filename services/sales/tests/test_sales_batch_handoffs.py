"""A batch of lead-qualified handoffs stored together (group commit, issue 12), against the
real mongod: what the batch costs in round trips (MongoDB's profiler, no timing) and that
its effects are those of the handoffs one by one: one item per lead, the rotation kept,
a duplicate without a second effect, a poisoned record parked alone.

The records are handed to sales' own consumer handlers as one fetch would hand them (the
Kafka side is a stand-in recording dead letters and offset commits), so the batch is
exactly the one written here.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, TypeAlias

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from crm_contracts import Envelope, envelope_for
from crm_contracts.topics import LEAD_QUALIFIED
from crm_platform.consumer import ConsumerConfig, EventConsumer, Outcome
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


def _consumer(sales: Sales) -> tuple[Recording, StandInKafka]:
    kafka = StandInKafka()
    subscription = consumers.subscription(sales.app.state.uow)
    consumer = Recording(
        ConsumerConfig(service="sales", group_id="sales-batch-test", topics=[LEAD_QUALIFIED], bootstrap="-"),
        sales.runtime.store,
        subscription.handlers,
    )
    consumer.outcomes = {}
    consumer.consumer = kafka
    consumer.producer = kafka
    return consumer, kafka


def _record(offset: int, value: bytes) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(LEAD_QUALIFIED, 0, offset, 0, 0, b"k", value, None, 1, len(value), ())


def _handoff(sales: Sales, make_qualified: Any, lead_id: str) -> Envelope:
    return envelope_for(make_qualified(lead_id), source="leads", correlation_id=f"journey-{lead_id}")


async def _profiled(sales: Sales, consumer: Recording, records: list[Any]) -> Counter[tuple[str, str]]:
    """Hand ``records`` to the consumer as one fetch; the operations inside transactions by
    (operation, collection)."""
    db = sales.runtime.db
    await db.command({"profile": 2})
    try:
        await consumer._handle_partition(TP, records, {})
    finally:
        await db.command({"profile": 0})
    ops: Counter[tuple[str, str]] = Counter()
    async for op in db["system.profile"].find({"command.txnNumber": {"$exists": True}}):
        ops[(op["op"], op["ns"].split(".", 1)[1])] += 1
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
