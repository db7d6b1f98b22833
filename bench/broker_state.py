"""Keep the embedded broker's state from skewing one figure with another's traffic.

noida-db, the embedded Kafka-protocol broker, keeps every topic's records in one JSON
state file that it rewrites shortly after each change (each byte as a decimal number:
about 3.5 bytes of file per byte of record). The rewrite's cost grows with everything
ever produced, so after the baseline's 10,000 messages and the capture phase's events,
a handoff measured on the same broker pays for traffic that is not its own.

Between figures the bench deletes the records every consumer has already read
(the Kafka protocol's DeleteRecords, up to each partition's high watermark), so each
figure starts from a near-empty log without restarting the platform. It does this only
on the embedded broker: on a real cluster (``KAFKA_BOOTSTRAP_SERVERS``) nothing is
deleted, Kafka's log does not slow down with its size. The state file's size before
each trim is reported next to the figures.
"""

from __future__ import annotations

from pathlib import Path

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.records_to_delete import RecordsToDelete
from aiokafka.errors import PolicyViolationError
from crm_platform.kafka import make_consumer
from crm_platform.kafka_security import KafkaSecurity


def state_mb(home: Path) -> float:
    """Size of the embedded broker's state file(s), in MB (0 when there are none)."""
    files = list((home / "kafka" / "data").glob("*.json"))
    return round(sum(f.stat().st_size for f in files if f.exists()) / 2**20, 1)


async def trim_log(bootstrap: str) -> int:
    """Delete every record below each partition's high watermark; returns the records deleted.

    Callers make sure every consumer has caught up first (each figure waits for its
    own deliveries), so no committed position points below what is deleted.
    """
    consumer = make_consumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        topics = [t for t in await consumer.topics() if not t.startswith("__")]
        parts = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        if not parts:
            return 0
        ends = await consumer.end_offsets(parts)
        starts = await consumer.beginning_offsets(parts)
    finally:
        await consumer.stop()
    todo = {tp: end for tp, end in ends.items() if end > starts.get(tp, 0)}
    deleted = 0
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **KafkaSecurity.from_env().aiokafka_kwargs())
    await admin.start()
    try:
        for topic in sorted({tp.topic for tp in todo}):
            mine = {tp: RecordsToDelete(before_offset=end) for tp, end in todo.items() if tp.topic == topic}
            try:
                await admin.delete_records(mine, timeout_ms=30_000)
            except PolicyViolationError:
                continue  # a compacted topic (faust's changelogs): the broker refuses, rightly
            deleted += sum(todo[tp] - starts.get(tp, 0) for tp in mine)
    finally:
        await admin.close()
    return deleted
