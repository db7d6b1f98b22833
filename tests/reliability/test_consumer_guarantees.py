"""Idempotent consumer and dead letters, against the real broker and mongod."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from crm_platform.runtime import ServiceRuntime, Subscription
from crm_platform.settings import ServiceSettings
from crm_platform.testing import TopicReader, eventually, produce, produce_envelope
from reliability.probe import envelope, record_effect

pytestmark = pytest.mark.integration


def _runtime(settings: ServiceSettings, topic: str) -> ServiceRuntime:
    return ServiceRuntime(
        settings, subscription=Subscription(topics=[topic], handlers={"lead.captured": record_effect})
    )


async def _effect(runtime: ServiceRuntime, event_id: object) -> dict[str, Any] | None:
    return await runtime.db["effects"].find_one({"_id": str(event_id)})


async def test_same_event_delivered_twice_has_one_effect(
    kafka_bootstrap: str,
    make_settings: Callable[..., ServiceSettings],
    scratch_topics: Callable[[str], tuple[str, str]],
) -> None:
    service = f"rel-idem-{uuid.uuid4().hex[:6]}"
    topic, _ = scratch_topics(service)
    runtime = _runtime(make_settings(service, CRM_SERVICE_NAME=service), topic)
    await runtime.start()
    try:
        twice = envelope("lead-a", "twice")
        marker = envelope("lead-b", "marker")
        await produce_envelope(kafka_bootstrap, topic, twice)
        await produce_envelope(kafka_bootstrap, topic, twice)
        await produce_envelope(kafka_bootstrap, topic, marker)
        # The marker comes after both copies on one partition: once it is stored,
        # both copies of the first event have been handled.
        await eventually(lambda: _effect(runtime, marker.event_id), what="marker effect")
        effect = await _effect(runtime, twice.event_id)
        assert effect is not None
        assert effect["count"] == 1
        assert await runtime.db["processed_events"].count_documents({}) == 2
    finally:
        await runtime.stop()


async def test_unprocessable_events_are_dead_lettered_and_the_consumer_carries_on(
    kafka_bootstrap: str,
    make_settings: Callable[..., ServiceSettings],
    scratch_topics: Callable[[str], tuple[str, str]],
) -> None:
    service = f"rel-dlq-{uuid.uuid4().hex[:6]}"
    topic, dlq = scratch_topics(service)
    runtime = _runtime(make_settings(service, CRM_SERVICE_NAME=service), topic)
    reader = await TopicReader(kafka_bootstrap, dlq).start()
    await runtime.start()
    try:
        good = envelope("lead-ok", "valid")
        bad_schema = envelope("lead-x", "x").model_copy(update={"payload": {"lead_id": "lead-x"}})
        unknown_version = envelope("lead-y", "y").model_copy(update={"schema_version": 99})
        await produce(kafka_bootstrap, topic, b"\x00not json{", key=b"k1")
        await produce_envelope(kafka_bootstrap, topic, bad_schema)
        await produce_envelope(kafka_bootstrap, topic, unknown_version)
        await produce_envelope(kafka_bootstrap, topic, good)

        await eventually(lambda: _effect(runtime, good.event_id), what="the valid event's effect")
        records = await reader.wait_for(lambda rs: rs if len(rs) >= 3 else None, what="three dead letters")
    finally:
        await runtime.stop()
        await reader.stop()

    by_reason = {dict(r.headers)["dlq_reason"].decode(): r for r in records}
    assert set(by_reason) == {"malformed", "schema_invalid", "unknown_version"}
    malformed = by_reason["malformed"]
    assert malformed.value == b"\x00not json{", "original bytes kept"
    headers = dict(malformed.headers)
    assert headers["dlq_consumer_group"].decode() == service
    assert headers["dlq_source_topic"].decode() == topic
    assert headers["dlq_source_offset"].decode() == "0"
    assert "lead.captured v99" in dict(by_reason["unknown_version"].headers)["dlq_error"].decode()
    invalid = json.loads(by_reason["schema_invalid"].value)
    assert invalid["event_id"] == str(bad_schema.event_id)
    assert "email" in dict(by_reason["schema_invalid"].headers)["dlq_error"].decode()
