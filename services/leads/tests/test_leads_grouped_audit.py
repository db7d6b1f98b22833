"""Assignments that marketing's consumer stores in ONE transaction (group commit) name, in
each lead's history, the assignment that caused the change, not ``system:leads`` (the
transaction's context is taken before any event's; the saves are deferred to one
``bulk_write`` at the commit). On the real broker and mongod: the events are produced as one
record batch, so the running service fetches and stores them together.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any, TypeAlias

import pytest
from crm_contracts import envelope_for, utcnow
from crm_contracts.events.sales import LeadAssignedV1
from crm_platform.testing import (
    auth_headers,
    eventually,
    histories_name_their_events,
    named_by_events_only,
    produce_together,
    transaction_of,
)
from leads import store as repo

pytestmark = pytest.mark.integration
Leads: TypeAlias = Any  # conftest.Leads


async def test_each_lead_of_a_grouped_batch_of_assignments_names_its_own_assignment(leads: Leads) -> None:
    tag = uuid.uuid4().hex[:8]
    ids = [(await leads.capture(company=f"Firm {tag}"))["lead"]["id"] for _ in range(5)]
    since, at = utcnow(), utcnow() - timedelta(minutes=5)
    envs = [
        envelope_for(
            LeadAssignedV1(lead_id=lead_id, owner=f"rep{k}-{tag}", response_due_at=at + timedelta(hours=4)),
            source="sales",
            correlation_id=f"journey-{lead_id}",
            occurred_at=at,
        )
        for k, lead_id in enumerate(ids)
    ]
    await produce_together(leads.settings.kafka_bootstrap_servers, LeadAssignedV1.topic, envs)

    async def assigned() -> bool:
        reps = [(await leads.lead(lead_id)).get("owner") for lead_id in ids]
        return reps == [f"rep{k}-{tag}" for k in range(5)]

    await eventually(assigned, what="the batch's assignments")
    db = leads.runtime.db
    histories = await histories_name_their_events(
        db, repo.LEADS, dict(zip(ids, envs, strict=True)), since=since
    )
    [transaction] = {transaction_of(h[-1]) for h in histories.values()}
    await named_by_events_only(db, transaction)  # nothing named system:leads

    r = await leads.client.get(f"/leads/{ids[2]}/history", headers=auth_headers(["marketing"], "mia"))
    assert r.status_code == 200, r.text
    newest = r.json()["items"][0]
    assert (newest["actor"]["event_id"], newest["correlation_id"]) == (
        str(envs[2].event_id),
        f"journey-{ids[2]}",
    )
