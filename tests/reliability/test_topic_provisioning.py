"""Topic provisioning (``crm_platform.kafka.ensure_topics``) against the real broker: every
service provisions the table's topics at start-up with aiokafka's admin client (kafka-python's
import alone kept 6.7 MB resident in each service: docs/performance.md, fourteenth session, drain).
"""

from __future__ import annotations

import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from crm_contracts.topics import TopicSpec
from crm_platform.kafka import ensure_topics, ensure_topics_async

pytestmark = pytest.mark.integration


async def _partitions(bootstrap: str, topic: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
        return len(described["partitions"])
    finally:
        await admin.close()


async def test_a_missing_topic_is_created_then_found_and_its_drift_reported(kafka_bootstrap: str) -> None:
    name = f"crm.test.provision-{uuid.uuid4().hex[:8]}"
    spec = TopicSpec(name, "test", "provisioning", partitions=3, replication_factor=3, retention_ms=3_600_000)
    # from a thread that runs an event loop (the bench and the tests call it so), as a service's
    # runtime does not (ensure_topics_async)
    created = ensure_topics(kafka_bootstrap, [spec])
    assert (created.created, created.existing, created.mismatches) == ([name], [], [])
    assert await _partitions(kafka_bootstrap, name) == 3  # replication capped by the one broker

    again = await ensure_topics_async(kafka_bootstrap, specs=[spec])
    assert (again.created, again.existing, again.mismatches) == ([], [name], [])

    drifted = TopicSpec(name, "test", "provisioning", partitions=6, retention_ms=7_200_000)
    report = await ensure_topics_async(kafka_bootstrap, specs=[drifted])
    assert report.mismatches == [
        f"{name}: 3 partitions, table says 6",
        f"{name}: retention.ms=3600000, table says 7200000",
    ]
