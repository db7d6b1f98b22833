"""Empty-fetch pacing: an idle consumer waits after each empty fetch and still gets new records.

Apache Kafka holds an empty fetch for fetch.max.wait.ms; the embedded broker answers at
once, which made every idle consumer spin. ``pace_empty_fetches`` restores the wait on
the client side. The bound checked here is a logical one: each empty fetch is followed by
at least the pause, so a slow machine can only make fewer fetches, never more.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.consumer.fetcher import Fetcher
from crm_contracts.topics import TopicSpec
from crm_platform import kafka as kafka_module
from crm_platform.kafka import ensure_topics, pace_empty_fetches
from crm_platform.testing import eventually

PAUSE_MS = 50
IDLE_WINDOW_S = 1.0


@pytest.mark.integration
async def test_idle_consumer_fetches_at_most_once_per_pause_and_still_receives(
    kafka_bootstrap: str,
    scratch_topics: Callable[[str], tuple[str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topic, _ = scratch_topics("pacing")
    # Process-wide settings: monkeypatch puts the session's own pause back afterwards.
    monkeypatch.setattr(kafka_module, "_empty_fetch_pause", kafka_module._empty_fetch_pause)
    pace_empty_fetches(PAUSE_MS)
    paced = Fetcher._proc_fetch_request
    fetches = 0

    async def counting(self: Fetcher, *args: Any, **kwargs: Any) -> bool:
        nonlocal fetches
        # Only this test's consumer: the patch is process-wide, and another test's
        # consumer still closing in the background must not count.
        if self is consumer._fetcher:
            fetches += 1
        result: bool = await paced(self, *args, **kwargs)
        return result

    monkeypatch.setattr(Fetcher, "_proc_fetch_request", counting)

    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await consumer.start()
    await producer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_end(tp)
        await consumer.position(tp)

        fetches = 0
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < IDLE_WINDOW_S:
            assert await consumer.getmany(timeout_ms=100) == {}
        bound = elapsed / (PAUSE_MS / 1000) + 3  # +3: fetches in flight at either edge
        assert fetches <= bound, f"{fetches} fetches in {elapsed:.2f}s idle: the pause is not applied"

        await producer.send_and_wait(topic, b"after the idle spell")
        received: list[bytes] = []

        async def got_it() -> bool:
            for records in (await consumer.getmany(timeout_ms=100)).values():
                received.extend(r.value for r in records if r.value is not None)
            return bool(received)

        await eventually(got_it, timeout=10, what="the record produced after the idle spell")
        assert received == [b"after the idle spell"]
    finally:
        await producer.stop()
        await consumer.stop()


@pytest.mark.integration
async def test_records_taken_as_a_fetch_task_ends_leave_no_fetch_routine_waiting(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiokafka's fetch routine frees a broker for the next fetch in a done callback of the fetch
    task. Woken for records taken (its ``_wait_consume_future``) in the loop round in which a fetch
    task ended, it saw the task done but the broker still in flight, sent nothing, and waited with
    no task to wake it: the next record waited for the routine's timeout (5 s in the platform:
    counted 1-2 times a platform phase; five times in a row in sales' department consumer with
    the trickle's pause, whose records are taken during its fetch task (``hand_over``):
    docs/performance.md, twenty-sixth session, fetchtail). Provoked step by step: partition 0's
    record in hand while a fetch of partition 1 pauses an hour; the record taken and the pause
    ended without the loop running between; the routine's timeout ten minutes. The record
    produced after it must still come."""
    topic = f"crm.test.wakeup.{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_bootstrap, [TopicSpec(topic, "test", "scratch", partitions=2, replication_factor=1)])
    monkeypatch.setattr(kafka_module, "_empty_fetch_pause", kafka_module._empty_fetch_pause)
    pace_empty_fetches(3_600_000)  # a pause ends only when hurried
    first, second = TopicPartition(topic, 0), TopicPartition(topic, 1)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap, enable_auto_commit=False, consumer_timeout_ms=600_000
    )
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await consumer.start()
    await producer.start()
    try:
        consumer.assign([first, second])
        await consumer.seek_to_end(first, second)
        await producer.send_and_wait(topic, b"in hand", partition=0)
        await _record_in_hand_while_a_fetch_pauses(consumer, first)
        taken = await consumer.getmany(first, timeout_ms=0)  # takes it without the loop running
        kafka_module.hurry_fetches()  # the fetch's pause ends in the same round
        assert [r.value for r in taken[first]] == [b"in hand"]

        await producer.send_and_wait(topic, b"the next", partition=1)
        received: list[bytes] = []

        async def got_it() -> bool:
            kafka_module.hurry_fetches()  # whatever fetch pauses now fetches again
            for records in (await consumer.getmany(timeout_ms=100)).values():
                received.extend(r.value for r in records if r.value is not None)
            return bool(received)

        await eventually(got_it, timeout=15, what="the next record (a fetch routine left waiting)")
        assert received == [b"the next"]
    finally:
        await producer.stop()
        await consumer.stop()


async def _record_in_hand_while_a_fetch_pauses(consumer: AIOKafkaConsumer, tp: TopicPartition) -> None:
    """Until ``tp``'s record is buffered while a fetch task of ``consumer`` pauses (each check that
    finds otherwise ends the pauses, so the consumer fetches until then)."""
    fetcher = consumer._fetcher

    async def pausing_with_it() -> bool:
        if tp in fetcher._records and any(not t.done() for t in fetcher._pending_tasks):
            return True
        kafka_module.hurry_fetches()
        return False

    await eventually(pausing_with_it, timeout=15, what="a fetch pausing with the record in hand")
