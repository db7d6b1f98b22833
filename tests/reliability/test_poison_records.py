"""Poison records never stop a partition and are dead-lettered exactly once.

Against the real broker and mongod: each record that cannot be read (whatever
breaks: decoding, classification, validation) goes to the DLQ once, with a
reason, and the records behind it on the same partition are still handled.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from crm_platform.runtime import ServiceRuntime, Subscription
from crm_platform.settings import ServiceSettings
from crm_platform.testing import TopicReader, eventually, produce, produce_envelope
from reliability.probe import envelope, record_effect

pytestmark = pytest.mark.integration

# About 2 KB of nested arrays: json.loads in the old classification raised
# RecursionError, which escaped the consumer and made it reconnect forever.
DEEP_ARRAYS = b"[" * 1000 + b"]" * 1000
DEEP_OBJECTS = b'{"a":' * 5000 + b"1" + b"}" * 5000


def _runtime(settings: ServiceSettings, topic: str) -> ServiceRuntime:
    return ServiceRuntime(
        settings, subscription=Subscription(topics=[topic], handlers={"lead.captured": record_effect})
    )


async def _effect(runtime: ServiceRuntime, event_id: object) -> dict[str, Any] | None:
    return await runtime.db["effects"].find_one({"_id": str(event_id)})


async def test_poison_records_are_dead_lettered_once_and_the_partition_moves_on(
    kafka_bootstrap: str,
    make_settings: Callable[..., ServiceSettings],
    scratch_topics: Callable[[str], tuple[str, str]],
) -> None:
    service = f"rel-poison-{uuid.uuid4().hex[:6]}"
    topic, dlq = scratch_topics(service)
    runtime = _runtime(make_settings(service, CRM_SERVICE_NAME=service), topic)
    reader = await TopicReader(kafka_bootstrap, dlq).start()
    poison = {
        b"deep-arrays": DEEP_ARRAYS,
        b"deep-objects": DEEP_OBJECTS,
        b"huge-int": b'{"event_type": "lead.captured", "schema_version": ' + b"9" * 5000 + b"}",
        b"bad-utf8": b'{"event_type": "\xff\xfe"}',
        b"empty": b"",
    }
    first = envelope("lead-first", "before the poison")
    await produce_envelope(kafka_bootstrap, topic, first)
    for key, value in poison.items():
        await produce(kafka_bootstrap, topic, value, key=key, headers=[("odd", b"\xff")])
    await runtime.start()
    try:
        await eventually(lambda: _effect(runtime, first.event_id), what="the first event's effect")
        after = envelope("lead-after", "behind the poison")
        await produce_envelope(kafka_bootstrap, topic, after)
        await eventually(lambda: _effect(runtime, after.event_id), timeout=30, what="the event behind")
        records = await reader.wait_for(
            lambda rs: rs if len({r.key for r in rs} & set(poison)) == len(poison) else None,
            what="every poison record dead-lettered",
        )
        # A restart must not dead-letter them again: their offsets are committed.
        await runtime.stop()
        runtime = _runtime(make_settings(service, CRM_SERVICE_NAME=service), topic)
        await runtime.start()
        last = envelope("lead-last", "after a restart")
        await produce_envelope(kafka_bootstrap, topic, last)
        await eventually(lambda: _effect(runtime, last.event_id), timeout=30, what="the event after restart")
        # Any repeat would have been written before the last event was handled.
        seen = -1
        while seen != len(records):
            seen = len(records)
            records = list(await reader.poll())
    finally:
        await runtime.stop()
        await reader.stop()
    mine = [r for r in records if r.key in poison]
    assert sorted(r.key for r in mine) == sorted(poison), "each poison record dead-lettered exactly once"
    reasons = {r.key: dict(r.headers)["dlq_reason"].decode() for r in mine}
    assert reasons[b"deep-arrays"] == "too_deep"
    assert reasons[b"deep-objects"] == "too_deep"
    assert reasons[b"bad-utf8"] == "malformed"
    assert reasons[b"empty"] == "malformed"
    assert reasons[b"huge-int"] in {"malformed", "schema_invalid"}
