"""The re-send timer's round (crm_platform.receipts.HandoffTracker.check_round), on the real mongod:
one read when nothing is due, the checks and the gauges as before when something is."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import pytest
from crm_contracts import utcnow
from crm_platform import metrics
from crm_platform.money import TYPE_REGISTRY
from crm_platform.mongo import HANDOFFS_SENT, Store
from crm_platform.receipts import GAVE_UP, PENDING, HandoffTracker, ensure_indexes
from crm_platform.settings import ServiceSettings
from crm_platform.testing import CommandNames
from pymongo import AsyncMongoClient

pytestmark = pytest.mark.integration


def _record(event_id: str, handoff: str, state: str, *, age: timedelta, due_in: timedelta) -> dict[str, Any]:
    now = utcnow()
    return {
        "_id": event_id,
        "handoff": handoff,
        "event_type": "deal.won",
        "key": event_id,
        "state": state,
        "created_at": now - age,
        "resends": 0,
        "next_check_at": now + due_in,
    }


def _gauges(service: str, handoff: str) -> tuple[float, float]:
    unreceipted = metrics.HANDOFFS_UNRECEIPTED.labels(service, handoff)._value.get()
    return unreceipted, metrics.HANDOFFS_GIVEN_UP.labels(service, handoff)._value.get()


async def test_a_round_with_nothing_due_is_one_read_and_a_due_handoff_is_still_checked(
    mongodb_uri: str,
) -> None:
    commands = CommandNames(HANDOFFS_SENT)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        mongodb_uri, tz_aware=True, type_registry=TYPE_REGISTRY, event_listeners=[commands]
    )
    settings = ServiceSettings.model_validate(
        {
            "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
            "MONGODB_URI": mongodb_uri,
            "CRM_SERVICE_NAME": "sales",
            "CRM_HANDOFF_CHECK_SECONDS": 3600,  # one round, then the test stops the timer
        }
    )
    store = Store(client, f"t_receipts_round_{uuid.uuid4().hex[:8]}", "sales")
    tracker = HandoffTracker(store, settings, department="sales", wake_relay=lambda: None)
    handoff = f"h-{uuid.uuid4().hex[:8]}"
    sent = store.db[HANDOFFS_SENT]
    try:
        await ensure_indexes(store.db)
        minute, hour = timedelta(minutes=1), timedelta(hours=1)
        await sent.insert_many(
            [
                _record("in-flight-1", handoff, PENDING, age=minute, due_in=minute),
                _record("in-flight-2", handoff, PENDING, age=minute, due_in=minute),
                _record("given-up", handoff, GAVE_UP, age=hour, due_in=-hour),
            ]
        )
        commands.names.clear()
        timer = asyncio.create_task(tracker._resend_loop())
        deadline = asyncio.get_running_loop().time() + 30
        while _gauges("sales", handoff) != (3, 1):
            assert asyncio.get_running_loop().time() < deadline, "the first round set no gauges"
            await asyncio.sleep(0.01)
        await tracker.stop()
        await asyncio.wait_for(timer, 30)
        assert commands.names == ["aggregate"], "nothing due: the gauges' read, no find of due handoffs"

        # Silent long enough and its outbox row gone: due, checked and given up ("gone"); the
        # gauges are read again after that check and count it given up.
        await sent.insert_one(_record("lost", handoff, PENDING, age=timedelta(days=2), due_in=-minute))
        commands.names.clear()
        assert await tracker.check_round() == {"gone": 1}
        round_trips = list(commands.names)
        assert (await sent.find_one({"_id": "lost"}) or {})["state"] == GAVE_UP
        assert _gauges("sales", handoff) == (4, 2)
        # the gauges' read, the due find, the check's transaction (its find and update), the gauges again
        assert round_trips == ["aggregate", "find", "find", "update", "aggregate"]
    finally:
        await client.drop_database(store.db.name)
        await client.close()
