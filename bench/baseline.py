"""The bare baseline: produce -> consume -> insert on the same broker and mongod.

No services, no outbox, no contracts validation, no transactions: the floor any
handoff implementation pays on this machine. The platform figures are reported
as a ratio to this.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer
from crm_contracts.topics import TopicSpec
from crm_platform.kafka import ensure_topics, make_admin, make_consumer
from crm_platform.kafka_security import aiokafka_security
from pymongo import AsyncMongoClient


@dataclass
class RunResult:
    sent: int
    stored: int
    seconds: float
    latencies: list[float]  # the measured messages', in the order they were sent
    warmup_latencies: list[float] = field(default_factory=list)  # the first ``warmup``, not counted

    @property
    def rate(self) -> float:
        return self.stored / self.seconds if self.seconds else 0.0


PAYLOAD_PAD = "x" * 900  # about the size of a lead.qualified envelope


async def run_baseline(
    bootstrap: str,
    mongodb_uri: str,
    *,
    rate: float | None,
    count: int,
    warmup: int = 0,
    drain_timeout: float = 120.0,
) -> RunResult:
    """Send ``warmup`` + ``count`` messages at ``rate``/s (None: as fast as possible), until all
    are stored; the first ``warmup`` are the warm-up (the consumer's group join, its first
    fetches), their latencies kept apart (``RunResult.warmup_latencies``), as the platform's
    fixed-rate window keeps its first handoffs apart (run_bench.fixed_rate).

    ``seconds`` runs from the first send to the last insert, so with ``rate=None``
    ``stored / seconds`` is the pipeline's sustained throughput. The topic is
    deleted afterwards: the embedded broker's cost grows with what it holds.
    """
    topic = f"bench.baseline.{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(
        ensure_topics,
        bootstrap,
        [TopicSpec(topic, "bench", "baseline", partitions=6, replication_factor=1)],
    )
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(mongodb_uri)
    coll = client["bench_baseline"][topic.replace(".", "_")]
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=2, **aiokafka_security()
    )
    sink = _Sink(bootstrap, topic, coll)
    await producer.start()
    await sink.consumer.start()
    consumer_task = asyncio.create_task(sink.consume())
    started = time.perf_counter()
    sink.sent = await _send(producer, topic, warmup + count, rate, started)
    sink.done.set()
    try:
        await asyncio.wait_for(consumer_task, timeout=drain_timeout)
    except TimeoutError:
        consumer_task.cancel()
    elapsed = time.perf_counter() - started
    await sink.consumer.stop()
    await producer.stop()
    await client["bench_baseline"].drop_collection(coll.name)
    await client.close()
    await asyncio.to_thread(_delete_topic, bootstrap, topic)
    measured, warmed = split_warmup(sink.latencies, warmup)
    return RunResult(sink.sent - warmup, len(measured), elapsed, measured, warmed)


def split_warmup(latencies: list[tuple[int, float]], warmup: int) -> tuple[list[float], list[float]]:
    """(place in the sending from 1, latency) pairs, in any order (partitions are consumed side by
    side), as the measured messages' latencies and the first ``warmup`` messages', each in sending
    order."""
    ordered = sorted(latencies)
    return [x for seq, x in ordered if seq > warmup], [x for seq, x in ordered if seq <= warmup]


class _Sink:
    """Consumes the baseline topic and inserts each message, noting its end-to-end latency."""

    def __init__(self, bootstrap: str, topic: str, coll: Any) -> None:
        self.coll = coll
        self.consumer = make_consumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=topic,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        self.latencies: list[tuple[int, float]] = []  # (the message's place in the sending, latency)
        self.sent = 0  # known once sending is done
        self.done = asyncio.Event()

    async def consume(self) -> None:
        while not self.done.is_set() or len(self.latencies) < self.sent:
            batches = await self.consumer.getmany(timeout_ms=100, max_records=500)
            for records in batches.values():
                for r in records:
                    doc = json.loads(r.value)
                    await self.coll.insert_one(doc)
                    self.latencies.append((doc["seq"], time.time() - doc["created"]))
            if batches:
                await self.consumer.commit()


async def _send(
    producer: AIOKafkaProducer, topic: str, count: int, rate: float | None, started: float
) -> int:
    """Send ``count`` messages, paced to ``rate``/s from ``started`` (None: in batches of 1000)."""
    interval = 1.0 / rate if rate else 0.0
    pending = []
    for sent in range(1, count + 1):
        key = uuid.uuid4().hex
        doc = {"_id": key, "seq": sent, "created": time.time(), "pad": PAYLOAD_PAD}
        pending.append(await producer.send(topic, json.dumps(doc).encode(), key=key.encode()))
        if rate:
            delay = started + sent * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        elif len(pending) >= 1000:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
    return count


def _delete_topic(bootstrap: str, topic: str) -> None:
    admin = make_admin(bootstrap, "crm-bench")
    try:
        admin.delete_topics([topic])
    except Exception as exc:  # a broker that cannot delete keeps it; figures are unaffected
        print(f"  (could not delete {topic}: {exc})")
    finally:
        admin.close()
