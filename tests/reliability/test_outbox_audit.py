"""The outbox audit: an event the broker acknowledged and then lost is published again.

Real broker, real mongod, one service runtime publishing to a topic of the test's
own. Found by ``make chaos``: after broker restarts under load, records the broker
had acknowledged (and that sales had consumed and receipted) were missing from the
log, so analytics, which reads the same topic, never counted them.

How a loss is simulated: the broker acknowledged an event at the partition's end
and then lost it; what the relay then has is an outbox row marked published at a
position whose record is gone. The test writes that row directly (published at the
topic's current end, no record sent). Published normally afterwards, the next event
lands at that very offset, as it does on a broker that lost its tail.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from crm_contracts import utcnow
from crm_contracts.events.leads import LeadStatusChangedV1
from crm_contracts.registry import envelope_for
from crm_platform.mongo import OUTBOX, outbox_doc, outbox_rows
from crm_platform.outbox_audit import AUDITED, LOG_CHECKS, LOG_OFFSET, LOG_PARTITION, LOG_POSITIONS
from crm_platform.runtime import ServiceRuntime
from crm_platform.settings import ServiceSettings
from crm_platform.testing import TopicReader, eventually
from prometheus_client import REGISTRY

pytestmark = pytest.mark.integration

FAST_AUDIT = {"CRM_OUTBOX_AUDIT_AFTER_SECONDS": 1, "CRM_OUTBOX_AUDIT_SECONDS": 0.2}


async def topic_end(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        return int((await consumer.end_offsets([tp]))[tp])
    finally:
        await consumer.stop()


class Sender:
    def __init__(self, runtime: ServiceRuntime, topic: str) -> None:
        self.runtime = runtime
        self.topic = topic

    async def emit(self, *, lost_at: int | None = None) -> str:
        """Store one event for the test's topic; with ``lost_at``, "acknowledged there and lost".

        The outbox row is written as a transaction writes it, with the test's topic; the
        lost one is written as the relay leaves a row it published (no record is sent).
        """
        event = LeadStatusChangedV1(
            lead_id=f"audit-{uuid.uuid4().hex[:8]}", status="nurturing", source_channel="web"
        )
        env = envelope_for(event, source=self.runtime.settings.service_name, correlation_id="audit")
        row = {**outbox_doc(env), "topic": self.topic}
        if lost_at is not None:
            row.update(
                {
                    "published": True,
                    "published_at": utcnow(),
                    LOG_PARTITION: 0,
                    LOG_OFFSET: lost_at,
                    AUDITED: False,
                }
            )
        await self.runtime.db[OUTBOX].insert_one(row)
        self.runtime.relay.notify()
        return str(env.event_id)

    async def row(self, event_id: str) -> dict[str, Any]:
        doc = await self.runtime.db[OUTBOX].find_one({"event_id": event_id})
        assert doc is not None
        return doc


def republished(service: str, topic: str) -> float:
    labels = {"service": service, "topic": topic}
    return REGISTRY.get_sample_value("crm_outbox_republished_total", labels) or 0.0


def ids_in(reader: TopicReader) -> list[str]:
    return [str(env.event_id) for env in reader.envelopes()]


@pytest.mark.parametrize("offset_reused", [True, False], ids=["offset-reused", "tail-lost"])
async def test_an_event_the_broker_lost_after_acknowledging_it_is_published_again(
    kafka_bootstrap: str,
    make_settings: Callable[..., ServiceSettings],
    scratch_topics: Callable[[str], tuple[str, str]],
    offset_reused: bool,
) -> None:
    service = f"audit-{uuid.uuid4().hex[:6]}"
    topic, _ = scratch_topics(service)
    runtime = ServiceRuntime(make_settings(service, **FAST_AUDIT))
    sender = Sender(runtime, topic)
    reader = await TopicReader(kafka_bootstrap, topic).start()
    before = republished(service, topic)
    await runtime.start()
    try:
        end = await topic_end(kafka_bootstrap, topic)
        lost = await sender.emit(lost_at=end)
        later = await sender.emit() if offset_reused else None

        async def lost_arrived() -> list[str] | None:
            await reader.poll()
            return ids_in(reader) if lost in ids_in(reader) else None

        await eventually(lost_arrived, timeout=30, what="the lost event published again")

        async def all_audited() -> bool:
            rows = [await sender.row(e) for e in (lost, later) if e is not None]
            return all(r.get(AUDITED) is True for r in rows)

        await eventually(all_audited, timeout=30, what="both rows audited")
        await reader.poll()
        seen = ids_in(reader)
        lost_row = await sender.row(lost)
    finally:
        await runtime.stop()
        await reader.stop()

    assert seen.count(lost) == 1, "published again once, with the same event id"
    if later is not None:
        assert seen.count(later) == 1, "the event now at the lost one's offset is left alone"
        assert seen.index(later) < seen.index(lost)
        assert lost_row[LOG_OFFSET] > end, "the lost event has a new position of its own"
    assert lost_row["republished"] == 1
    assert republished(service, topic) == before + 1, "the republish is counted"


async def test_events_the_broker_kept_are_audited_and_not_published_again(
    kafka_bootstrap: str,
    make_settings: Callable[..., ServiceSettings],
    scratch_topics: Callable[[str], tuple[str, str]],
) -> None:
    service = f"audit-{uuid.uuid4().hex[:6]}"
    topic, _ = scratch_topics(service)
    runtime = ServiceRuntime(make_settings(service, **FAST_AUDIT))
    sender = Sender(runtime, topic)
    reader = await TopicReader(kafka_bootstrap, topic).start()
    await runtime.start()
    try:
        sent = [await sender.emit() for _ in range(20)]

        async def all_audited() -> bool:
            rows = [await sender.row(e) for e in sent]
            return all(r.get(AUDITED) is True for r in rows)

        await eventually(all_audited, timeout=30, what="every row audited")

        async def all_read() -> list[str] | None:
            await reader.poll()
            return ids_in(reader) if len(ids_in(reader)) >= len(sent) else None

        await eventually(all_read, timeout=30, what="every event read")
        await reader.poll()
        seen = ids_in(reader)
        rows = [await sender.row(e) for e in sent]
    finally:
        await runtime.stop()
        await reader.stop()

    assert sorted(seen) == sorted(sent), "each event once"
    assert [r[LOG_OFFSET] for r in rows] == sorted(r[LOG_OFFSET] for r in rows)
    assert all("republished" not in r for r in rows)
    assert republished(service, topic) == 0


async def batch_row(
    runtime: ServiceRuntime, topic: str, n: int, *, lost_at: int | None = None, checks: bool = True
) -> list[str]:
    """Store ``n`` events as ONE batch row (as ``emit(batched=True)`` stores a bulk path's
    events); with ``lost_at``, "published from there on, and lost" (no record sent), in one
    producer batch whose last record the audit checks (``checks``), or as a relay before
    ``log_checks`` left it (every event checked)."""
    envs = [
        envelope_for(
            LeadStatusChangedV1(
                lead_id=f"batch-{uuid.uuid4().hex[:8]}", status="nurturing", source_channel="web"
            ),
            source=runtime.settings.service_name,
            correlation_id="audit",
        )
        for _ in range(n)
    ]
    [row] = outbox_rows([{**outbox_doc(env), "topic": topic} for env in envs], [True] * n)
    if lost_at is not None:
        positions = [[0, lost_at + k] for k in range(n)]
        row.update({"published": True, "published_at": utcnow(), LOG_POSITIONS: positions, AUDITED: False})
        if checks:
            row[LOG_CHECKS] = [[topic, 0, lost_at + n - 1, str(envs[-1].event_id)]]
    await runtime.db[OUTBOX].insert_one(row)
    runtime.relay.notify()
    return [str(env.event_id) for env in envs]


async def test_a_batch_row_is_published_event_by_event_in_order_and_audited(
    kafka_bootstrap: str,
    make_settings: Callable[..., ServiceSettings],
    scratch_topics: Callable[[str], tuple[str, str]],
) -> None:
    service = f"audit-{uuid.uuid4().hex[:6]}"
    topic, _ = scratch_topics(service)
    runtime = ServiceRuntime(make_settings(service, **FAST_AUDIT))
    reader = await TopicReader(kafka_bootstrap, topic).start()
    await runtime.start()
    try:
        sent = await batch_row(runtime, topic, 5)

        async def audited() -> dict[str, Any] | None:
            row = await runtime.db[OUTBOX].find_one({"event_id": f"batch:{sent[0]}"})
            return row if row is not None and row.get(AUDITED) is True else None

        row = await eventually(audited, timeout=30, what="the batch row published and audited")
        await reader.wait_for(lambda envs: len(envs) >= 5, what="the batch's five events")
        seen = ids_in(reader)
    finally:
        await runtime.stop()
        await reader.stop()

    assert seen == sent, "one record per event, in the batch's order"
    assert [p for p, _ in row[LOG_POSITIONS]] == [0] * 5
    assert [o for _, o in row[LOG_POSITIONS]] == sorted(o for _, o in row[LOG_POSITIONS])
    # One producer batch: the audit read its last record, not the five.
    assert row[LOG_CHECKS] == [[topic, 0, row[LOG_POSITIONS][-1][1], sent[-1]]]
    assert "republished" not in row
    assert republished(service, topic) == 0


@pytest.mark.parametrize("checks", [True, False], ids=["checked-per-producer-batch", "checked-per-event"])
async def test_a_batch_row_with_an_event_the_broker_lost_is_published_again_whole(
    kafka_bootstrap: str,
    make_settings: Callable[..., ServiceSettings],
    scratch_topics: Callable[[str], tuple[str, str]],
    checks: bool,
) -> None:
    service = f"audit-{uuid.uuid4().hex[:6]}"
    topic, _ = scratch_topics(service)
    runtime = ServiceRuntime(make_settings(service, **FAST_AUDIT))
    sender = Sender(runtime, topic)
    reader = await TopicReader(kafka_bootstrap, topic).start()
    await runtime.start()
    try:
        kept = [await sender.emit() for _ in range(2)]  # two records really in the log
        await eventually(lambda: _all_published(runtime), timeout=30, what="the two events published")
        end = await topic_end(kafka_bootstrap, topic)
        lost = await batch_row(runtime, topic, 3, lost_at=end, checks=checks)

        async def republished_and_audited() -> dict[str, Any] | None:
            row = await runtime.db[OUTBOX].find_one({"event_id": f"batch:{lost[0]}"})
            return row if row is not None and row.get("republished") == 1 and row.get(AUDITED) else None

        row = await eventually(republished_and_audited, timeout=30, what="the batch row published again")
        await reader.wait_for(lambda envs: len(envs) >= 5, what="the kept events and the batch's three")
        seen = ids_in(reader)
    finally:
        await runtime.stop()
        await reader.stop()

    assert seen[:2] == kept
    assert seen[2:] == lost, "the whole batch published again, in order (consumers drop copies by id)"
    assert all(o >= end for _, o in row[LOG_POSITIONS]), "new positions of its own"
    assert row[LOG_CHECKS] == [[topic, 0, row[LOG_POSITIONS][-1][1], lost[-1]]], "and checks of its own"
    assert republished(service, topic) == 1


async def _all_published(runtime: ServiceRuntime) -> bool:
    return await runtime.db[OUTBOX].count_documents({"published": False}) == 0
