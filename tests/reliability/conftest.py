"""Fixtures for the platform reliability tests."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from crm_contracts.topics import TopicSpec, dead_letter_topic
from crm_platform.kafka import ensure_topics


@pytest.fixture
def scratch_topics(kafka_bootstrap: str) -> Callable[[str], tuple[str, str]]:
    """A fresh single-partition topic for the test, and the service's DLQ topic."""

    def make(service: str) -> tuple[str, str]:
        topic = f"crm.test.{service}.{uuid.uuid4().hex[:8]}"
        dlq = dead_letter_topic(service)
        ensure_topics(
            kafka_bootstrap,
            [
                TopicSpec(topic, "test", "scratch", partitions=1, replication_factor=1),
                TopicSpec(dlq, "test", "scratch dlq", partitions=1, replication_factor=1),
            ],
        )
        return topic, dlq

    return make
