"""A broker outage is visible to operators and invisible to users.

Before: ``crm_outbox_backlog`` was refreshed only after the relay published nothing,
so while the broker was down (the relay looping on publish errors) it stayed at its
last value, 0, and ``CrmOutboxBacklogGrowing`` could never fire; and ``/readyz``
answered 503 because the broker did not, taking every write API out of its Service
although the outbox keeps writes working. Now the backlog is sampled on its own
timer, readiness depends on the database only, and the broker's state is the gauge
``crm_broker_reachable`` (alert ``CrmBrokerUnreachable``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from crm_platform.app import create_app
from crm_platform.mongo import Tx
from crm_platform.runtime import ServiceRuntime
from crm_platform.settings import ServiceSettings
from crm_platform.testing import eventually, running_app
from prometheus_client import REGISTRY
from reliability.probe import captured

pytestmark = pytest.mark.integration

EVENTS = 7


def _gauge(name: str, service: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"service": service})


async def test_broker_down_backlog_gauge_rises_readiness_stays_and_the_broker_gauge_drops(
    crm_infra: Any, make_settings: Callable[..., ServiceSettings]
) -> None:
    if crm_infra.embedded is None:
        pytest.skip("needs the embedded broker to stop and start it")
    service = f"reliability-visibility-{uuid.uuid4().hex[:6]}"
    settings = make_settings(service, CRM_OUTBOX_BACKLOG_SAMPLE_SECONDS="0.2", CRM_BROKER_CHECK_SECONDS="0.3")
    runtime = ServiceRuntime(settings)
    app = create_app(settings=settings, title="visibility", runtime=runtime)
    async with running_app(app) as client:
        await eventually(
            lambda: _at(_gauge("crm_broker_reachable", service), 1.0), what="broker reachable reported"
        )
        await eventually(lambda: _at(_gauge("crm_outbox_backlog", service), 0.0), what="empty backlog")
        crm_infra.embedded.stop_kafka()
        try:
            # The relay must have met the outage (a failed publish) before the writes,
            # the state in which the old gauge froze.
            await eventually(lambda: _at(_gauge("crm_broker_reachable", service), 0.0), what="broker down")
            for i in range(EVENTS):

                async def write(tx: Tx, i: int = i) -> None:
                    tx.emit(captured(f"visibility-{service}-{i}", f"seq-{i}"))

                await runtime.store.transaction(write)
            await eventually(
                lambda: _at(_gauge("crm_outbox_backlog", service), float(EVENTS)),
                timeout=15,
                what="crm_outbox_backlog to show the events held back by the outage",
            )
            ready = await client.get("/readyz")
            assert ready.status_code == 200, ready.text
            body = ready.json()
            assert body["checks"] == {"mongodb": "ok"}
            assert body["broker"].startswith("unreachable"), body
        finally:
            crm_infra.embedded.start_kafka()
        await eventually(
            lambda: _at(_gauge("crm_outbox_backlog", service), 0.0), timeout=60, what="backlog drained"
        )
        await eventually(lambda: _at(_gauge("crm_broker_reachable", service), 1.0), what="broker back")


async def _at(value: float | None, expected: float) -> bool | None:
    return True if value == expected else None
