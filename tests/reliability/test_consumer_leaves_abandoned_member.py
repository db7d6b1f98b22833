"""A consumer that abandons its member id leaves the group with it, so its next join completes.

aiokafka forgets its member id when the coordinator refuses its generation or member
(``IllegalGenerationError``, ``UnknownMemberIdError``: after a broker restart, a commit of the
old generation) and joins again as a new member, without a ``LeaveGroup`` for the old one. The
embedded broker keeps such a member for good: the new member's join completed a generation led
by the old member, which never synced, and the consumer never got partitions again (seen in the
broker-restart test under load; docs/performance.md, twenty-fourth session, restart). Apache
Kafka keeps it until its session or rebalance timeout. With ``crm_platform.liveness
.harden_aiokafka`` the consumer sends a ``LeaveGroup`` for every member id it abandons.

The refused generation is made here by moving the consumer's generation past the broker's (what
a restarted broker's coordinator amounts to), so the next commit is refused for real.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalGenerationError
from crm_contracts.topics import TopicSpec
from crm_platform.kafka import ensure_topics, make_consumer, start_client, stop_client
from crm_platform.liveness import harden_aiokafka
from crm_platform.testing import eventually

pytestmark = pytest.mark.integration


class Assignments(ConsumerRebalanceListener):
    """Counts completed assignments (each one a join and a sync that succeeded)."""

    def __init__(self) -> None:
        self.count = 0

    async def on_partitions_revoked(self, revoked: Any) -> None:
        pass

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.count += 1


async def test_a_consumer_whose_generation_is_refused_gets_partitions_again(kafka_bootstrap: str) -> None:
    harden_aiokafka()
    group = f"rel-abandoned-{uuid.uuid4().hex[:6]}"
    topic = f"crm.test.{group}"
    ensure_topics(kafka_bootstrap, [TopicSpec(topic, "test", "scratch", partitions=1, replication_factor=1)])
    assignments = Assignments()
    consumer = make_consumer(
        bootstrap_servers=kafka_bootstrap, group_id=group, client_id=group, enable_auto_commit=False
    )
    consumer.subscribe([topic], listener=assignments)
    await start_client(consumer)
    try:
        assert assignments.count == 1
        coordinator = consumer._coordinator
        first = coordinator.member_id
        coordinator.generation += 1  # the coordinator's generation is no longer the consumer's
        with pytest.raises(CommitFailedError) as refused:
            await consumer.commit({TopicPartition(topic, 0): 0})
        assert isinstance(refused.value.__cause__, IllegalGenerationError)

        async def assigned_again() -> bool:
            return assignments.count >= 2

        await eventually(assigned_again, timeout=30, interval=0.1, what="partitions assigned again")
        assert coordinator.member_id not in ("", first), "joined again as a new member"
        assert consumer.assignment() == {TopicPartition(topic, 0)}
    finally:
        await stop_client(consumer)
