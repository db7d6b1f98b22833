"""Consumers never stop silently: lag from the broker, a stall watchdog, guarded tasks.

Against the real broker and mongod: a consumer whose handler blocks shows rising
lag, is rejoined, then (still stalled) reported as fatal naming its group and
partition; a partition moving to another member stops being reported by the one
that lost it; a consumer or relay task that ends makes the service fatal.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import TopicPartition
from crm_contracts import Envelope, envelope_for, utcnow
from crm_contracts.events.platform import HandoffReceivedV1
from crm_contracts.handoffs import HANDOFF_BY_EVENT_TYPE
from crm_contracts.topics import HANDOFF_RECEIPTS, TopicSpec, dead_letter_topic
from crm_platform import metrics
from crm_platform.kafka import ensure_topics
from crm_platform.liveness import ConsumerWatchdog, PartitionTracker, WatchdogConfig
from crm_platform.mongo import Tx
from crm_platform.runtime import ServiceRuntime, Subscription
from crm_platform.settings import ServiceSettings
from crm_platform.testing import eventually, produce, produce_envelope
from reliability.probe import commit_offsets, delete_records_before, envelope, record_effect

pytestmark = pytest.mark.integration


def make_topic(bootstrap: str, service: str, partitions: int) -> str:
    topic = f"crm.test.{service}.{uuid.uuid4().hex[:8]}"
    ensure_topics(
        bootstrap,
        [
            TopicSpec(topic, "test", "scratch", partitions=partitions, replication_factor=1),
            TopicSpec(dead_letter_topic(service), "test", "dlq", partitions=1, replication_factor=1),
        ],
    )
    return topic


def gauge(metric: Any, *labels: str) -> float | None:
    for family in metric.collect():
        for sample in family.samples:
            if tuple(sample.labels.values()) == labels:
                return float(sample.value)
    return None


class Fatal:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def __call__(self, reason: str) -> None:
        self.reasons.append(reason)


async def test_a_stalled_consumer_shows_rising_lag_rejoins_then_is_fatal(
    kafka_bootstrap: str,
    make_settings: Callable[..., ServiceSettings],
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = f"rel-stall-{uuid.uuid4().hex[:6]}"
    topic = make_topic(kafka_bootstrap, service, partitions=1)
    release = asyncio.Event()
    entered = 0

    async def blocked(tx: Tx, event: Any, env: Envelope) -> None:
        nonlocal entered
        entered += 1
        await release.wait()  # a handler that never returns: nothing is ever committed
        await record_effect(tx, event, env)

    settings = make_settings(
        service,
        CRM_SERVICE_NAME=service,
        CRM_CONSUMER_STALL_SECONDS=3,
        CRM_CONSUMER_WATCHDOG_SECONDS=0.5,
    )
    runtime = ServiceRuntime(
        settings, subscription=Subscription(topics=[topic], handlers={"lead.captured": blocked})
    )
    fatal = Fatal()
    runtime.on_fatal = fatal
    caplog.set_level(logging.ERROR, logger="crm.liveness")
    await runtime.start()
    try:
        await produce_envelope(kafka_bootstrap, topic, envelope("lead-stall", "first"))

        async def lag() -> float | None:
            return gauge(metrics.CONSUMER_LAG, service, topic, "0")

        assert await eventually(lag, timeout=30, what="lag of the held partition") == 1
        for i in range(4):
            await produce_envelope(kafka_bootstrap, topic, envelope(f"lead-stall-{i}", f"more-{i}"))
        await eventually(lambda: _equals(lag, 5), timeout=30, what="lag rising to 5")

        rejoins = metrics.CONSUMER_REJOINS.labels(service, settings.group_id)
        await eventually(_at_least(lambda: rejoins._value.get(), 1), timeout=30, what="a rejoin")
        stalled = gauge(metrics.CONSUMER_STALLED, service, settings.group_id, topic, "0")
        assert stalled == 1
        await eventually(_at_least(lambda: entered, 2), timeout=30, what="the rejoined consumer fetching")

        await eventually(_at_least(lambda: len(fatal.reasons), 1), timeout=30, what="fatal")
        assert settings.group_id in fatal.reasons[0]
        assert f"{topic}[0]" in fatal.reasons[0]
        logged = [r.getMessage() for r in caplog.records if r.name == "crm.liveness"]
        assert any("rejoining" in m and settings.group_id in m and f"{topic}[0]" in m for m in logged)
    finally:
        release.set()
        await runtime.stop()


async def test_a_stalled_receipt_listener_is_rejoined_and_receipts_flow_again(
    kafka_bootstrap: str,
    make_settings: Callable[..., ServiceSettings],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The receipt listener is watched like the department's consumer: stuck, it is rejoined."""
    service = f"rel-receipts-{uuid.uuid4().hex[:6]}"
    topic = make_topic(kafka_bootstrap, service, partitions=1)
    settings = make_settings(
        service,
        CRM_SERVICE_NAME=service,
        CRM_CONSUMER_STALL_SECONDS=3,
        CRM_CONSUMER_WATCHDOG_SECONDS=0.5,
    )
    runtime = ServiceRuntime(
        settings,
        subscription=Subscription(
            topics=[topic], handlers={"lead.captured": record_effect}, department="marketing"
        ),
    )
    fatal = Fatal()
    runtime.on_fatal = fatal
    tracker = runtime.receipts
    watchdog = runtime.receipts_watchdog
    assert tracker is not None
    assert watchdog is not None
    stuck = asyncio.Event()
    calls: list[list[str]] = []
    mark = tracker.mark_receipted

    async def first_call_hangs(event_ids: list[str]) -> int:
        calls.append(event_ids)
        if len(calls) == 1:
            stuck.set()
            await asyncio.Event().wait()  # the listener never commits: only a rejoin ends this
        return await mark(event_ids)

    tracker.mark_receipted = first_call_hangs  # type: ignore[method-assign]
    caplog.set_level(logging.ERROR, logger="crm.liveness")
    await runtime.start()
    try:
        await produce_envelope(kafka_bootstrap, HANDOFF_RECEIPTS, _receipt_for_marketing())
        await eventually(_async(stuck.is_set), timeout=60, what="the receipt listener stuck")
        group = tracker.group_id
        rejoins = metrics.CONSUMER_REJOINS.labels(service, group)
        await eventually(_at_least(lambda: rejoins._value.get(), 1), timeout=60, what="a rejoin")
        await eventually(_at_least(lambda: len(calls), 2), timeout=60, what="a fresh listener")
        await eventually(
            _async(
                lambda: (
                    runtime.receipts_watchdog is not None and runtime.receipts_watchdog.rejoined_at is None
                )
            ),
            timeout=60,
            what="the listener's group making progress again",
        )
        assert fatal.reasons == []
        logged = [r.getMessage() for r in caplog.records if r.name == "crm.liveness"]
        assert any("rejoining" in m and group in m and HANDOFF_RECEIPTS in m for m in logged)
    finally:
        await runtime.stop()


def _receipt_for_marketing() -> Envelope:
    handoff = HANDOFF_BY_EVENT_TYPE["lead.qualified"]
    now = utcnow()
    return envelope_for(
        HandoffReceivedV1(
            handoff=handoff.name,
            handoff_event_id=f"evt-{uuid.uuid4().hex}",
            handoff_event_type="lead.qualified",
            from_department=handoff.from_department,
            to_department=handoff.to_department,
            occurred_at=now,
            stored_at=now,
            transport_latency_seconds=0.0,
        ),
        source="reliability-test",
        correlation_id="receipt-listener-stall",
    )


async def test_a_revoked_partition_is_no_longer_reported(
    kafka_bootstrap: str, make_settings: Callable[..., ServiceSettings]
) -> None:
    base = f"rel-revoke-{uuid.uuid4().hex[:6]}"
    topic = make_topic(kafka_bootstrap, base, partitions=2)
    group = f"{base}-group"
    runtimes = []
    for member in ("a", "b"):
        settings = make_settings(
            f"{base}-{member}",
            CRM_CONSUMER_GROUP=group,
            CRM_CONSUMER_WATCHDOG_SECONDS=0.3,
        )
        runtimes.append(
            ServiceRuntime(
                settings,
                subscription=Subscription(topics=[topic], handlers={"lead.captured": record_effect}),
            )
        )
    first, second = runtimes
    a, b = first.settings.service_name, second.settings.service_name

    def reported(service: str) -> set[int]:
        return {p for p in (0, 1) if gauge(metrics.CONSUMER_LAG, service, topic, str(p)) is not None}

    await first.start()
    try:
        await eventually(_async(lambda: reported(a) == {0, 1}), timeout=30, what="a reports both")
        await second.start()
        try:
            await eventually(
                _async(lambda: len(reported(a)) == 1 and reported(a) | reported(b) == {0, 1}),
                timeout=60,
                what="each member reporting only the partition it holds",
            )
        finally:
            await second.stop()
        await eventually(_async(lambda: reported(a) == {0, 1}), timeout=60, what="a holds both again")
    finally:
        await first.stop()


@pytest.mark.parametrize("task", ["consumer", "relay"])
async def test_a_background_task_that_ends_is_fatal(
    task: str,
    kafka_bootstrap: str,
    make_settings: Callable[..., ServiceSettings],
) -> None:
    service = f"rel-task-{uuid.uuid4().hex[:6]}"
    topic = make_topic(kafka_bootstrap, service, partitions=1)
    runtime = ServiceRuntime(
        make_settings(service),
        subscription=Subscription(topics=[topic], handlers={"lead.captured": record_effect}),
    )
    fatal = Fatal()
    runtime.on_fatal = fatal

    async def broken() -> None:
        raise RuntimeError("boom")

    target: Any = runtime.consumer if task == "consumer" else runtime.relay
    target.run = broken
    await runtime.start()
    try:
        await eventually(_at_least(lambda: len(fatal.reasons), 1), timeout=10, what="fatal")
        assert "RuntimeError: boom" in fatal.reasons[0]
    finally:
        await runtime.stop()
    assert len(fatal.reasons) == 1, "a graceful stop is not fatal"


def _at_least(value: Callable[[], float], n: float) -> Callable[[], Any]:
    async def check() -> bool:
        return value() >= n

    return check


def _async(predicate: Callable[[], bool]) -> Callable[[], Any]:
    async def check() -> bool:
        return predicate()

    return check


async def _equals(read: Callable[[], Any], value: float) -> bool:
    return await read() == value


async def test_a_consumer_task_killed_by_a_stray_cancelled_error_is_fatal(
    kafka_bootstrap: str, make_settings: Callable[..., ServiceSettings]
) -> None:
    service = f"rel-stray-{uuid.uuid4().hex[:6]}"
    topic = make_topic(kafka_bootstrap, service, partitions=1)
    runtime = ServiceRuntime(
        make_settings(service),
        subscription=Subscription(topics=[topic], handlers={"lead.captured": record_effect}),
    )
    fatal = Fatal()
    runtime.on_fatal = fatal

    async def stray() -> None:
        # e.g. a client's stop() re-raising the cancellation of one of its own tasks
        raise asyncio.CancelledError

    assert runtime.consumer is not None
    runtime.consumer.run = stray  # type: ignore[method-assign]
    await runtime.start()
    try:
        await eventually(_at_least(lambda: len(fatal.reasons), 1), timeout=10, what="fatal")
    finally:
        await runtime.stop()


async def test_a_group_whose_records_are_gone_shows_no_lag_and_is_not_stalled(
    kafka_bootstrap: str,
) -> None:
    """Retention (here the broker's delete-records) took a quiet partition past the group's
    committed offset: the consumer has nothing to read and will never commit there again.
    The watchdog counts from the log's start: no lag reported, no stall, no restart (counting
    from the committed offset, every restart would meet the same stall)."""
    service = f"rel-gone-{uuid.uuid4().hex[:6]}"
    topic = make_topic(kafka_bootstrap, service, partitions=1)
    tp = TopicPartition(topic, 0)
    group = f"{service}-group"
    for i in range(3):
        await produce(kafka_bootstrap, topic, b"x", key=f"k{i}".encode())
    await commit_offsets(kafka_bootstrap, group, {tp: 1})  # read one record, then went away
    await delete_records_before(kafka_bootstrap, tp, 3)

    tracker = PartitionTracker(service)
    await tracker.on_partitions_assigned([tp])
    fatal = Fatal()
    watchdog = ConsumerWatchdog(
        WatchdogConfig(service, group, [topic], kafka_bootstrap, stall_seconds=1),
        tracker,
        rejoin=None,
        on_fatal=fatal,
    )
    try:
        offsets = await watchdog.reader.read(group, {tp})
        assert (offsets.committed[tp], offsets.ends[tp], offsets.starts[tp]) == (1, 3, 3)
        for now in (0.0, 5.0, 10.0):
            assert await watchdog.tick(now) == []
        assert gauge(metrics.CONSUMER_LAG, service, topic, "0") == 0
        assert fatal.reasons == []

        await produce(kafka_bootstrap, topic, b"x", key=b"k3")  # a record after the start: lag
        assert await watchdog.tick(20.0) == []
        assert gauge(metrics.CONSUMER_LAG, service, topic, "0") == 1
        assert await watchdog.tick(25.0) == [tp], "still a stall when there is something to read"
        assert len(fatal.reasons) == 1
    finally:
        await watchdog.reader.close()
