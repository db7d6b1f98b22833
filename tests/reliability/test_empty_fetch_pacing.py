"""Empty-fetch pacing: an idle consumer waits after each empty fetch and still gets new records.

Apache Kafka holds an empty fetch for fetch.max.wait.ms; the embedded broker answers at
once, which made every idle consumer spin. ``pace_empty_fetches`` restores the wait on
the client side. The bound checked here is a logical one: each empty fetch is followed by
at least the pause, so a slow machine can only make fewer fetches, never more.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.consumer.fetcher import Fetcher
from crm_platform import kafka as kafka_module
from crm_platform.kafka import pace_empty_fetches
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
