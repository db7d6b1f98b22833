"""Handoff receipts end to end: a handoff the broker lost is re-sent and arrives once.

Real broker, real mongod, two departments built on the platform: a sender
(marketing) that emits ``lead.qualified`` and a receiver (sales) that stores one
effect per handoff event and emits the ``handoff.received`` receipt.

How a loss is simulated: the broker losing an acknowledged write looks, from the
sender, exactly like an outbox row marked published whose record never reaches
anyone. The test makes that state directly: while another "replica" holds the
outbox lease (so the relay cannot publish), the event is stored, then its outbox
row is marked published without being sent, then the lease is released. The
same trick on the receiver's side loses its receipt.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from crm_contracts import Envelope, utcnow
from crm_contracts.events.leads import LeadQualifiedV1
from crm_contracts.topics import HANDOFF_RECEIPTS, LEAD_VERDICT
from crm_platform.mongo import BATCH_EVENTS, HANDOFFS_SENT, OUTBOX, PROCESSED, Tx, handoff_records
from crm_platform.outbox import LEASE
from crm_platform.runtime import ServiceRuntime, Subscription
from crm_platform.settings import ServiceSettings
from crm_platform.testing import TopicReader, eventually
from prometheus_client import REGISTRY
from reliability.probe import qualified

pytestmark = pytest.mark.integration

RESEND_FAST = {"CRM_HANDOFF_RESEND_AFTER_SECONDS": 1, "CRM_HANDOFF_CHECK_SECONDS": 0.2}
# No fallback within a test's time: only being overtaken by a receipted handoff re-sends.
ONLY_WHEN_OVERTAKEN = {**RESEND_FAST, "CRM_HANDOFF_RESEND_SILENT_AFTER_SECONDS": 3600}
# A lone handoff: the silent-receiver fallback re-sends it.
LONE = {**RESEND_FAST, "CRM_HANDOFF_RESEND_SILENT_AFTER_SECONDS": 2}


async def record_qualified(tx: Tx, event: LeadQualifiedV1, envelope: Envelope) -> None:
    await tx.db["effects"].update_one(
        {"_id": str(envelope.event_id)},
        {"$inc": {"count": 1}, "$set": {"lead_id": event.lead_id}},
        upsert=True,
        session=tx.session,
    )


async def start_at_end(bootstrap: str, group: str, *topics: str) -> None:
    """Commit the topics' current end for ``group``: its first run skips the shared history."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()
        partitions = [
            TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or [])
        ]
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        await consumer.commit(dict(ends))
    finally:
        await consumer.stop()


async def pause_relay(runtime: ServiceRuntime) -> None:
    """Another replica holds the outbox lease: this relay publishes nothing."""
    expires = utcnow() + timedelta(hours=1)
    await runtime.db[LEASE].replace_one(
        {"_id": "relay"}, {"owner": "test-other-replica", "expires_at": expires}, upsert=True
    )
    # A real replica takes the lease only after it expired, by when this relay's timer has
    # renewed it (and failed); here it is handed over at once, so the relay looks now.
    runtime.relay.check_lease_now()


async def resume_relay(runtime: ServiceRuntime) -> None:
    await runtime.db[LEASE].delete_one({"_id": "relay", "owner": "test-other-replica"})
    runtime.relay.notify()


async def lose_published(runtime: ServiceRuntime, query: dict[str, Any]) -> None:
    """Mark stored events published although no broker has them: a lost acknowledged write. As
    the relay does once the broker acknowledged a row, its handoffs are recorded first."""
    rows = await runtime.db[OUTBOX].find({**query, "published": False}).to_list()
    if records := handoff_records(rows, runtime.relay.receipt_grace):
        await runtime.db[HANDOFFS_SENT].insert_many(records)
    result = await runtime.db[OUTBOX].update_many(
        {**query, "published": False}, {"$set": {"published": True, "published_at": utcnow()}}
    )
    assert result.modified_count == 1, query


def resent_count(service: str) -> float:
    labels = {"service": service, "handoff": "lead-qualified"}
    return REGISTRY.get_sample_value("crm_handoff_resent_total", labels) or 0.0


def duplicates(service: str, topic: str) -> float:
    labels = {
        "service": service,
        "topic": topic,
        "event_type": "lead.qualified",
        "outcome": "duplicate",
    }
    return REGISTRY.get_sample_value("crm_events_consumed_total", labels) or 0.0


class Departments:
    """A sender (marketing) and a receiver (sales), each with its own database and groups.

    The handoffs travel on a topic of the test's own: the suites share one broker, and
    other suites' sales services (the e2e platform runs for the whole session) consume
    the real lead-qualified topic and would receipt these handoffs too.
    """

    def __init__(
        self,
        make_settings: Callable[..., ServiceSettings],
        bootstrap: str,
        scratch_topics: Callable[[str], tuple[str, str]],
        resend: dict[str, float],
    ) -> None:
        run = uuid.uuid4().hex[:6]
        self.bootstrap = bootstrap
        self.sender_name = f"rcpt-marketing-{run}"
        receiver_name = f"rcpt-sales-{run}"
        self.topic, _ = scratch_topics(receiver_name)
        sender_settings = make_settings(
            self.sender_name, CRM_CONSUMER_GROUP=f"rcpt-marketing-{run}", **resend
        )
        receiver_settings = make_settings(receiver_name, CRM_CONSUMER_GROUP=f"rcpt-sales-{run}")
        # The sender handles nothing in this test, but a department with a
        # subscription is what gets receipt tracking.
        self.sender = ServiceRuntime(
            sender_settings,
            subscription=Subscription(topics=[LEAD_VERDICT], handlers={}, department="marketing"),
        )
        self.receiver = ServiceRuntime(
            receiver_settings,
            subscription=Subscription(
                topics=[self.topic], handlers={"lead.qualified": record_qualified}, department="sales"
            ),
        )

    async def start(self) -> None:
        assert self.sender.receipts is not None
        await start_at_end(self.bootstrap, self.sender.receipts.group_id, HANDOFF_RECEIPTS)
        await start_at_end(self.bootstrap, self.sender.settings.group_id, LEAD_VERDICT)
        await self.receiver.start()
        await self.sender.start()

    async def stop(self) -> None:
        await self.sender.stop()
        await self.receiver.stop()

    async def hand_off(self, lead_id: str, *, lost: bool = False) -> str:
        """Marketing qualifies a lead; with ``lost`` the broker "loses" the publish."""

        async def work(tx: Tx) -> str:
            return str(tx.emit(qualified(lead_id)).event_id)

        await pause_relay(self.sender)
        event_id = await self.sender.store.transaction(work)
        await self.sender.db[OUTBOX].update_one({"event_id": event_id}, {"$set": {"topic": self.topic}})
        if lost:
            await lose_published(self.sender, {"event_id": event_id})
        await resume_relay(self.sender)
        return event_id

    async def hand_off_batch(self, lead_ids: list[str], *, lost: bool) -> list[str]:
        """Marketing qualifies leads in one transaction, their handoffs sharing ONE outbox row
        (a tracker's batch); with ``lost`` the broker "loses" that row's publish."""

        async def work(tx: Tx) -> list[str]:
            return [str(tx.emit(qualified(lead_id), batched=True).event_id) for lead_id in lead_ids]

        await pause_relay(self.sender)
        event_ids = await self.sender.store.transaction(work)
        row = {f"{BATCH_EVENTS}.event_id": event_ids[0]}
        await self.sender.db[OUTBOX].update_one(
            row,
            {"$set": {f"{BATCH_EVENTS}.$[h].topic": self.topic}},
            array_filters=[{"h.event_type": "lead.qualified"}],
        )
        if lost:
            await lose_published(self.sender, row)
        await resume_relay(self.sender)
        return event_ids

    async def effect(self, event_id: str) -> dict[str, Any] | None:
        return await self.receiver.db["effects"].find_one({"_id": event_id})

    async def tracked(self, event_id: str) -> dict[str, Any]:
        """The sender's record of a handoff: written by its relay as it publishes it."""
        sent = self.sender.db[HANDOFFS_SENT]
        return await eventually(lambda: sent.find_one({"_id": event_id}), what="the handoff's record")

    async def receipted(self, event_id: str) -> dict[str, Any] | None:
        doc = await self.tracked(event_id)
        return doc if doc["state"] == "receipted" else None


async def test_a_handoff_lost_by_the_broker_is_re_sent_and_arrives_once(
    kafka_bootstrap: str,
    make_settings: Callable[..., ServiceSettings],
    scratch_topics: Callable[[str], tuple[str, str]],
) -> None:
    deps = Departments(make_settings, kafka_bootstrap, scratch_topics, ONLY_WHEN_OVERTAKEN)
    resent_before = resent_count(deps.sender_name)
    await deps.start()
    try:
        event_id = await deps.hand_off(f"lost-{uuid.uuid4().hex[:8]}", lost=True)
        first_check = (await deps.tracked(event_id))["next_check_at"]

        async def checked_and_kept() -> dict[str, Any] | None:
            doc = await deps.tracked(event_id)
            return doc if doc["next_check_at"] > first_check else None

        # Its timeout passed, but nothing shows the receiver is past it (it may be
        # down or behind): it is not re-sent yet.
        waited = await eventually(checked_and_kept, timeout=30, what="the first check of the handoff")
        assert waited["state"] == "pending"
        assert waited["resends"] == 0

        # A later handoff reaches sales and is receipted: sales is working and past the
        # lost one, which is then re-sent.
        later = await deps.hand_off(f"later-{uuid.uuid4().hex[:8]}")
        await eventually(lambda: deps.receipted(later), timeout=30, what="the later handoff's receipt")
        tracked = await eventually(
            lambda: deps.receipted(event_id), timeout=45, what="the receipt of the re-sent handoff"
        )
        effect = await deps.effect(event_id)
        ledger = await deps.receiver.db[PROCESSED].count_documents({"_id": event_id})
        later_tracked = await deps.tracked(later)
    finally:
        await deps.stop()

    assert effect is not None
    assert effect["count"] == 1, "the re-sent handoff has exactly one effect"
    assert ledger == 1
    assert tracked["resends"] == 1, "re-sent once, with the same event id"
    assert later_tracked["resends"] == 0
    assert resent_count(deps.sender_name) == resent_before + 1, "the re-send is counted"


async def test_a_handoff_whose_receipt_was_lost_is_re_sent_dropped_and_receipted(
    kafka_bootstrap: str,
    make_settings: Callable[..., ServiceSettings],
    scratch_topics: Callable[[str], tuple[str, str]],
) -> None:
    deps = Departments(make_settings, kafka_bootstrap, scratch_topics, LONE)
    dropped_before = duplicates(deps.receiver.settings.service_name, deps.topic)
    receipts = await TopicReader(kafka_bootstrap, HANDOFF_RECEIPTS).start()
    await deps.start()
    try:
        await pause_relay(deps.receiver)  # the receipt will be stored, not published
        event_id = await deps.hand_off(f"unreceipted-{uuid.uuid4().hex[:8]}")
        await eventually(lambda: deps.effect(event_id), timeout=30, what="the handoff's effect")
        receipt_query = {"event_type": "handoff.received", "envelope.payload.handoff_event_id": event_id}
        await lose_published(deps.receiver, receipt_query)
        await resume_relay(deps.receiver)

        tracked = await eventually(
            lambda: deps.receipted(event_id), timeout=45, what="the receipt confirmed again"
        )
        effect = await deps.effect(event_id)
        receipt_rows = await deps.receiver.db[OUTBOX].find(receipt_query).to_list()
        dropped = duplicates(deps.receiver.settings.service_name, deps.topic) - dropped_before

        def delivered(_: list[Any]) -> list[Envelope] | None:
            mine = [
                e for e in receipts.envelopes("handoff.received") if e.payload["handoff_event_id"] == event_id
            ]
            return mine or None

        seen = await receipts.wait_for(delivered, what="the receipt on the topic")
    finally:
        await deps.stop()
        await receipts.stop()

    assert effect is not None
    assert effect["count"] == 1, "the duplicate had no second effect"
    # The copy the ledger dropped is normally the sender's re-send; a redelivery of the
    # original (a rebalance before the receiver's offset commit) confirms the receipt
    # the same way, and then the sender has no need to re-send.
    assert dropped >= 1, "a copy of the handoff reached the receiver and was dropped by its ledger"
    assert tracked["resends"] >= 1 or dropped >= 1
    assert len(receipt_rows) == 1, "the receiver stored one receipt, published again, not a new one"
    original = receipt_rows[0]["event_id"]
    assert {str(e.event_id) for e in seen} == {original}, "the sender got the original receipt"


async def test_handoffs_lost_in_one_batch_row_are_each_re_sent_alone_and_arrive_once(
    kafka_bootstrap: str,
    make_settings: Callable[..., ServiceSettings],
    scratch_topics: Callable[[str], tuple[str, str]],
) -> None:
    """A tracker's batch stores its handoffs in ONE outbox row; each ``handoffs_sent`` record
    names that row, and a re-send puts its handoff back alone (a pending row of its own with
    the same event id), not the whole batch: each arrives once, re-sent once."""
    deps = Departments(make_settings, kafka_bootstrap, scratch_topics, LONE)
    await deps.start()
    try:
        leads = [f"batch-{uuid.uuid4().hex[:8]}" for _ in range(2)]
        event_ids = await deps.hand_off_batch(leads, lost=True)
        rows = {(await deps.tracked(e)).get("row") for e in event_ids}
        for e in event_ids:
            await eventually(partial(deps.receipted, e), timeout=45, what="the re-sent handoff's receipt")
        effects = [await deps.effect(e) for e in event_ids]
        ledger = await deps.receiver.db[PROCESSED].count_documents({"_id": {"$in": event_ids}})
        [batch] = await deps.sender.db[OUTBOX].find({f"{BATCH_EVENTS}.event_id": event_ids[0]}).to_list()
        alone = await deps.sender.db[OUTBOX].find({"event_id": {"$in": event_ids}}).to_list()
        tracked = [await deps.tracked(e) for e in event_ids]
    finally:
        await deps.stop()

    assert rows == {batch["event_id"]}, "each handoff's record names the batch row"
    handoffs = [i["event_id"] for i in batch[BATCH_EVENTS] if i["event_type"] == "lead.qualified"]
    assert handoffs == event_ids
    assert batch["published"] is True, "the batch row is not published again"
    assert sorted(r["event_id"] for r in alone) == sorted(event_ids), "each re-sent alone, same event id"
    assert [e["count"] if e else 0 for e in effects] == [1, 1], "one effect each"
    assert ledger == 2
    assert [t["resends"] for t in tracked] == [1, 1]
