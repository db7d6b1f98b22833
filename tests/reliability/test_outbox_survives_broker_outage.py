"""Outbox: with the broker stopped, writes succeed; when it returns, every event
arrives, none twice, in order per key."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest
from crm_contracts import Envelope
from crm_contracts.topics import LEADS_EVENTS
from crm_platform.mongo import OUTBOX, Tx
from crm_platform.runtime import ServiceRuntime
from crm_platform.settings import ServiceSettings
from crm_platform.testing import TopicReader, eventually
from reliability.probe import captured

pytestmark = pytest.mark.integration

KEYS, PER_KEY = 3, 10


async def test_events_written_while_broker_is_down_arrive_once_in_order(
    crm_infra: Any, kafka_bootstrap: str, make_settings: Callable[..., ServiceSettings]
) -> None:
    if crm_infra.embedded is None:
        pytest.skip("needs the embedded broker to stop and start it")
    runtime = ServiceRuntime(make_settings("reliability-outbox"))
    await runtime.start()
    run = uuid.uuid4().hex[:8]
    lead_ids = [f"outage-{run}-{k}" for k in range(KEYS)]
    try:
        crm_infra.embedded.stop_kafka()
        try:
            for i in range(PER_KEY):
                for lead_id in lead_ids:

                    async def write(tx: Tx, lead_id: str = lead_id, i: int = i) -> None:
                        await tx.db["leads"].update_one(
                            {"_id": lead_id},
                            {"$set": {"seq": i}},
                            upsert=True,
                            session=tx.session,
                        )
                        tx.emit(captured(lead_id, f"seq-{i:03d}"))

                    await runtime.store.transaction(write)
            pending = await runtime.db[OUTBOX].count_documents({"published": False})
            assert pending == KEYS * PER_KEY, "writes must succeed and queue while Kafka is down"
        finally:
            crm_infra.embedded.start_kafka()

        reader = await TopicReader(kafka_bootstrap, LEADS_EVENTS, from_beginning=True).start()
        try:

            def mine(_: list[Any]) -> list[Envelope] | None:
                envs = [e for e in reader.envelopes() if e.partition_key in lead_ids]
                return envs if len(envs) >= KEYS * PER_KEY else None

            envs = await reader.wait_for(mine, timeout=60, what="all outbox events after restart")
            await eventually(lambda: _none_pending(runtime), timeout=20, what="outbox marked published")
            await reader.poll()  # anything published twice would show up here
            envs = [e for e in reader.envelopes() if e.partition_key in lead_ids]
        finally:
            await reader.stop()
    finally:
        await runtime.stop()

    ids = [e.event_id for e in envs]
    assert len(ids) == len(set(ids)) == KEYS * PER_KEY, "each event exactly once"
    per_key: dict[str, list[str]] = defaultdict(list)
    for e in envs:
        per_key[e.partition_key].append(e.payload["name"])
    for lead_id in lead_ids:
        assert per_key[lead_id] == [f"seq-{i:03d}" for i in range(PER_KEY)], "order per key"


async def _none_pending(runtime: ServiceRuntime) -> bool:
    return await runtime.db[OUTBOX].count_documents({"published": False}) == 0
