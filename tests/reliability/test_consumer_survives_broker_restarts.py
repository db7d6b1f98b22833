"""A consumer keeps consuming through repeated broker restarts under load.

The broker is stopped with SIGINT, SIGTERM and SIGKILL, in turn, several times (each
restarted with the same command line) while events are produced. Every event that is
in the log afterwards has its effect stored by the consumer within a deadline.

Before the fix the consumer went silent for good after one of these restarts: its
commit failed (``IllegalGenerationError``), it stopped its aiokafka client to
reconnect, and ``stop()`` never returned (see ``crm_platform.liveness.harden_aiokafka``).

The emulator also loses acknowledged writes when it stops (the handoff receipts
re-send those); an event it lost is not in the log and not asked for here, and
neither is one written at an offset the group had already consumed and committed
past before the broker lost that stretch of its log (the ledger shows another
event stored from the same partition and offset).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from crm_contracts import Envelope
from crm_contracts.topics import TopicSpec, dead_letter_topic
from crm_platform.kafka import ensure_topics, make_producer
from crm_platform.mongo import PROCESSED
from crm_platform.runtime import ServiceRuntime, Subscription
from crm_platform.settings import ServiceSettings
from crm_platform.testing import eventually
from reliability.probe import envelope, record_effect

pytestmark = pytest.mark.integration
log = logging.getLogger("test.broker-restarts")

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL) * 3
GAP_SECONDS = 1.5  # broker up between two stops
RATE = 100  # events produced per second


async def test_every_event_in_the_log_is_consumed_through_broker_restarts(
    crm_infra: Any, kafka_bootstrap: str, make_settings: Callable[..., ServiceSettings]
) -> None:
    if crm_infra.embedded is None:
        pytest.skip("needs the embedded broker to stop and start it")
    service = f"rel-restarts-{uuid.uuid4().hex[:6]}"
    topic = f"crm.test.{service}"
    ensure_topics(
        kafka_bootstrap,
        [
            TopicSpec(topic, "test", "scratch", partitions=6, replication_factor=1),
            TopicSpec(dead_letter_topic(service), "test", "dlq", partitions=1, replication_factor=1),
        ],
    )
    runtime = ServiceRuntime(
        # The watchdog is the safety net, not the fix: with the stall window longer than
        # the test's deadline, the consumer must recover from the restarts on its own.
        make_settings(service, CRM_SERVICE_NAME=service, CRM_CONSUMER_STALL_SECONDS=3600),
        subscription=Subscription(topics=[topic], handlers={"lead.captured": record_effect}),
    )
    fatal: list[str] = []
    runtime.on_fatal = fatal.append
    await runtime.start()
    try:
        stop = asyncio.Event()
        producing = asyncio.create_task(_produce(kafka_bootstrap, topic, stop))
        try:
            for sig in SIGNALS:
                await asyncio.sleep(GAP_SECONDS)
                log.info("stopping the broker with %s", sig.name)
                await asyncio.to_thread(crm_infra.embedded.stop_kafka, sig)
                await asyncio.to_thread(crm_infra.embedded.start_kafka)
            await asyncio.sleep(GAP_SECONDS)
        finally:
            stop.set()
            sent = await producing
        in_log = await _log_positions(kafka_bootstrap, topic)

        async def missing() -> list[str]:
            done = {d["_id"] async for d in runtime.db["effects"].find({}, {"_id": 1})}
            slots = {
                (d["partition"], d["offset"]): d["_id"]
                async for d in runtime.db[PROCESSED].find({}, {"partition": 1, "offset": 1})
            }
            return [
                event_id
                for event_id, (partition, offset) in in_log.items()
                if event_id not in done and slots.get((partition, offset), event_id) == event_id
            ]

        async def all_consumed() -> bool:
            return not await missing()

        try:
            await eventually(all_consumed, timeout=60, interval=0.5, what="every event in the log consumed")
        except AssertionError:
            left = await missing()
            raise AssertionError(f"{len(left)} of {len(in_log)} events in the log never consumed") from None
        log.info("produced %d, %d in the log after the restarts", len(sent), len(in_log))
        assert len(in_log) > len(sent) // 2, "the broker kept most of what it acknowledged"
        assert not fatal
    finally:
        await runtime.stop()


async def _produce(bootstrap: str, topic: str, stop: asyncio.Event) -> list[str]:
    """Produce until ``stop``, reconnecting after each broker restart; the acknowledged ids."""
    sent: list[str] = []
    producer = None
    i = 0
    while not stop.is_set():
        try:
            if producer is None:
                producer = make_producer(bootstrap, "restarts-load")
                await producer.start()
            env = envelope(f"lead-{i}", f"n{i}")
            await producer.send_and_wait(topic, env.to_bytes(), key=env.partition_key.encode())
            sent.append(str(env.event_id))
            i += 1
            await asyncio.sleep(1 / RATE)
        except Exception as exc:
            log.info("produce failed (%s); reconnecting", type(exc).__name__)
            if producer is not None:
                with contextlib.suppress(Exception):
                    await producer.stop()
            producer = None
            await asyncio.sleep(0.1)
    if producer is not None:
        await producer.stop()
    return sent


async def _log_positions(bootstrap: str, topic: str) -> dict[str, tuple[int, int]]:
    """Each event id in the topic and where it is (partition, offset), read to the end."""
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await reader.start()
    try:
        await reader.topics()
        partitions = [TopicPartition(topic, p) for p in sorted(reader.partitions_for_topic(topic) or [])]
        reader.assign(partitions)
        await reader.seek_to_beginning(*partitions)
        ends = await reader.end_offsets(partitions)
        positions: dict[str, tuple[int, int]] = {}

        async def at_end() -> bool:
            for records in (await reader.getmany(timeout_ms=200)).values():
                for record in records:
                    event_id = str(Envelope.from_bytes(record.value).event_id)
                    positions.setdefault(event_id, (record.partition, record.offset))
            return all([await reader.position(tp) >= ends[tp] for tp in partitions])

        await eventually(at_end, timeout=30, what="the whole topic read")
        return positions
    finally:
        await reader.stop()
