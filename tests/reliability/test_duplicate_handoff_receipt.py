"""A re-sent handoff the receiver already stored: a database hiccup while its receipt is
confirmed again is retried, never a dead letter (real broker and mongod).

Found by ``make chaos``: during a ``mongod`` restart, leads dead-lettered a redelivered
``lead.verdict`` as ``handler_error`` because confirming its receipt again raised
``ServerSelectionTimeoutError`` outside the store's retry loop.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from crm_contracts import Envelope
from crm_platform import receipts
from crm_platform.mongo import PROCESSED, Store
from crm_platform.runtime import ServiceRuntime, Subscription
from crm_platform.settings import ServiceSettings
from crm_platform.testing import TopicReader, eventually, produce_envelope
from pymongo.errors import AutoReconnect
from reliability.probe import count_effect, handoff

pytestmark = pytest.mark.integration


async def test_a_transient_error_confirming_a_duplicates_receipt_is_retried_not_dead_lettered(
    kafka_bootstrap: str,
    make_settings: Callable[..., ServiceSettings],
    scratch_topics: Callable[[str], tuple[str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service = f"rel-dup-{uuid.uuid4().hex[:6]}"
    topic, dlq = scratch_topics(service)
    calls: list[str] = []
    confirm = receipts.confirm_again

    async def flaky_confirm(store: Store, envelope: Envelope) -> str:
        calls.append(str(envelope.event_id))
        if len(calls) == 1:
            raise AutoReconnect("127.0.0.1: connection refused (mongod restarting)")
        return await confirm(store, envelope)

    monkeypatch.setattr(receipts, "confirm_again", flaky_confirm)
    runtime = ServiceRuntime(
        make_settings(service, CRM_CONSUMER_GROUP=service),
        subscription=Subscription(
            topics=[topic], handlers={"lead.qualified": count_effect}, department="sales"
        ),
    )
    dead_letters = await TopicReader(kafka_bootstrap, dlq).start()
    await runtime.start()
    try:
        twice = handoff(f"dup-{uuid.uuid4().hex[:8]}")
        marker = handoff(f"marker-{uuid.uuid4().hex[:8]}")
        for env in (twice, twice, marker):
            await produce_envelope(kafka_bootstrap, topic, env)

        async def marker_stored() -> dict[str, Any] | None:
            return await runtime.db["effects"].find_one({"_id": str(marker.event_id)})

        # One partition: the marker is stored only after both copies were handled.
        await eventually(marker_stored, timeout=30, what="the marker's effect")
        effect = await runtime.db["effects"].find_one({"_id": str(twice.event_id)})
        ledger = await runtime.db[PROCESSED].count_documents({"_id": str(twice.event_id)})
        for _ in range(5):  # a dead letter would have been stored before the marker's effect
            await dead_letters.poll()
    finally:
        await runtime.stop()
        await dead_letters.stop()

    assert calls == [str(twice.event_id)] * 2, "the confirmation was retried after the hiccup"
    assert effect is not None
    assert effect["count"] == 1
    assert ledger == 1
    assert dead_letters.records == [], "a duplicate is never dead-lettered for a transient error"
