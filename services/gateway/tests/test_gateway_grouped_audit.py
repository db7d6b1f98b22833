"""The departments' erasure confirmations that the gateway's consumer stores in ONE
transaction (group commit) each name, in the erasure request's history, the confirmation
that caused the change: not ``system:gateway`` (the transaction's context is taken before
any event's). On the real broker and mongod: the confirmations are produced as one record
batch, so the running gateway fetches and stores them together.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from crm_contracts import envelope_for, utcnow
from crm_contracts.events.governance import ERASURE_DEPARTMENTS, ErasureCompletedV1
from crm_contracts.topics import ERASURE_CONFIRMATIONS
from crm_platform.testing import (
    auth_headers,
    entry_cause,
    event_cause,
    eventually,
    produce_together,
    start_group_at_end,
    transaction_of,
)
from gateway.settings import GatewaySettings
from gateway.store import ERASURES

pytestmark = pytest.mark.integration
ADMIN = auth_headers(["admin"], "grouped-admin")
AUDITOR = auth_headers(["auditor"], "grouped-auditor")


async def test_each_confirmation_of_a_grouped_batch_names_itself_in_the_requests_history(
    gateway: Callable[..., Any], gateway_settings: Callable[..., GatewaySettings], kafka_bootstrap: str
) -> None:
    settings = gateway_settings()
    await start_group_at_end(kafka_bootstrap, settings.group_id, [ERASURE_CONFIRMATIONS])
    async with gateway(settings) as client:
        r = await client.post("/erasure-requests", json={"email": "grouped@example.com"}, headers=ADMIN)
        assert r.status_code == 202, r.text
        request_id = r.json()["id"]
        envs = [
            envelope_for(
                ErasureCompletedV1(
                    request_id=request_id,
                    department=department,
                    records_erased=1,
                    audit_entries_rewritten=2,
                    duration_ms=250,
                    completed_at=utcnow(),
                ),
                source=department,
                correlation_id=f"{request_id}-{department}",
            )
            for department in ERASURE_DEPARTMENTS
        ]
        await produce_together(kafka_bootstrap, ERASURE_CONFIRMATIONS, envs)

        async def completed() -> bool:
            got = (await client.get(f"/erasure-requests/{request_id}", headers=AUDITOR)).json()
            return bool(got["state"] == "completed")

        await eventually(completed, what="the request to be completed")
        params = {"record_type": ERASURES, "record_id": request_id}
        r = await client.get("/audit", params=params, headers=AUDITOR)
        assert r.status_code == 200, r.text
    updates = [e for e in r.json()["items"] if e["action"] == "update"]
    assert sorted(entry_cause(e) for e in updates) == sorted(event_cause(env) for env in envs)
    assert len({transaction_of(e) for e in updates}) == 1, "one grouped transaction"
