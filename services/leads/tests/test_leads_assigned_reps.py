"""Sales reps read only the leads assigned to them (issue 9, field-level rules), on the real
broker and mongod: marketing learns the assignment from ``sales.lead_assigned`` (sales' events),
keeps it on the lead, and limits a rep on list, search, get, behaviours, history and export
(export reached by a grant); managers, marketing and admins see every lead. Reassignment moves
the lead; a stale or repeated copy of an assignment changes nothing; an unknown lead is
dead-lettered with its reason.
"""

from __future__ import annotations

import csv
import io
import uuid
from datetime import datetime, timedelta
from typing import Any, TypeAlias

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from crm_contracts import Envelope, envelope_for, utcnow
from crm_contracts.events.sales import LeadAssignedV1
from crm_contracts.topics import SALES_EVENTS, dead_letter_topic
from crm_platform.testing import TopicReader, eventually, grant_for_test, produce_envelope, token_for
from leads import store

pytestmark = pytest.mark.integration
Leads: TypeAlias = Any  # conftest.Leads


def _as(roles: list[str], user_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_for(roles, user_id, user_id=user_id)}"}


def _assignment(lead_id: str, rep: str, at: datetime) -> Envelope:
    event = LeadAssignedV1(lead_id=lead_id, owner=rep, response_due_at=at + timedelta(hours=4))
    return envelope_for(event, source="sales", correlation_id=f"journey-{lead_id}", occurred_at=at)


async def _assign(leads: Leads, env: Envelope) -> None:
    """Produce the assignment and wait until marketing's consumer processed it: its group's
    committed offset is past the record (committed once its effect is stored; an assignment
    keeps no ledger entry to look for, ``Subscription.unledgered``)."""
    bootstrap = leads.settings.kafka_bootstrap_servers
    sent = await produce_envelope(bootstrap, SALES_EVENTS, env)
    tp = TopicPartition(SALES_EVENTS, sent.partition)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:

        async def processed() -> bool:
            committed = (await admin.list_consumer_group_offsets(leads.settings.group_id)).get(tp)
            return committed is not None and committed.offset > sent.offset

        await eventually(processed, what=f"the assignment {env.event_id} processed")
    finally:
        await admin.close()


async def _rep_of(leads: Leads, lead_id: str) -> str | None:
    doc = await leads.runtime.db[store.LEADS].find_one({"_id": lead_id})
    return None if doc is None else doc.get("assigned_rep")


async def _readable(leads: Leads, headers: dict[str, str], ids: list[str], tag: str) -> set[str]:
    """Which of ``ids`` the user sees on every read route (asserting the routes agree)."""
    listed = {
        i["id"]
        for i in (await leads.client.get("/leads", params={"limit": 200}, headers=headers)).json()["items"]
    }
    searched = {
        i["id"]
        for i in (await leads.client.get("/leads", params={"q": tag}, headers=headers)).json()["items"]
    }
    r = await leads.client.get("/leads/export", params={"channel": tag}, headers=headers)
    assert r.status_code == 200, r.text
    export = r.text
    exported = {row["id"] for row in csv.DictReader(io.StringIO(export))}
    one_by_one = set()
    for lead_id in ids:
        codes = {
            (await leads.client.get(f"/leads/{lead_id}{suffix}", headers=headers)).status_code
            for suffix in ("", "/history", "/behaviours")
        }
        assert codes in ({200}, {403}), (lead_id, codes)
        if codes == {200}:
            one_by_one.add(lead_id)
    mine = set(ids)
    assert listed & mine == searched & mine == exported & mine == one_by_one, (
        listed,
        searched,
        exported,
        one_by_one,
    )
    return one_by_one


async def _grant_reps_the_export(leads: Leads) -> None:
    """Sales reps and managers hold no export by default: granted, as an administrator would."""
    await grant_for_test(
        leads.runtime, {"sales_rep": {"leads.leads.export"}, "sales_manager": {"leads.leads.export"}}
    )


async def test_each_rep_reads_only_the_leads_assigned_to_them(leads: Leads) -> None:
    await _grant_reps_the_export(leads)
    tag = f"reps{uuid.uuid4().hex[:8]}"
    rhea, rory = f"rhea-{tag}", f"rory-{tag}"
    ids = [(await leads.capture(company=f"Firm {tag}", source_channel=tag))["lead"]["id"] for _ in range(3)]
    first, second, unassigned = ids
    now = utcnow()
    await _assign(leads, _assignment(first, rhea, now))
    await _assign(leads, _assignment(second, rory, now))

    assert await _readable(leads, _as(["sales_rep"], rhea), ids, tag) == {first}
    assert await _readable(leads, _as(["sales_rep"], rory), ids, tag) == {second}
    for roles in (["sales_manager"], ["marketing"], ["admin"], ["sales_rep", "sales_manager"]):
        assert await _readable(leads, _as(roles, "someone"), ids, tag) == set(ids), roles
    assert unassigned not in await _readable(leads, _as(["sales_rep"], rhea), ids, tag)


async def test_reassignment_moves_the_lead_and_stale_or_repeated_copies_change_nothing(leads: Leads) -> None:
    await _grant_reps_the_export(leads)
    tag = f"move{uuid.uuid4().hex[:8]}"
    rhea, rory = f"rhea-{tag}", f"rory-{tag}"
    lead_id = (await leads.capture(company=f"Firm {tag}", source_channel=tag))["lead"]["id"]
    at = utcnow() - timedelta(minutes=10)
    original = _assignment(lead_id, rhea, at)
    await _assign(leads, original)
    assert await _readable(leads, _as(["sales_rep"], rhea), [lead_id], tag) == {lead_id}

    await _assign(leads, _assignment(lead_id, rory, at + timedelta(minutes=5)))  # a manager reassigned it
    assert await _rep_of(leads, lead_id) == rory
    assert await _readable(leads, _as(["sales_rep"], rhea), [lead_id], tag) == set()
    assert await _readable(leads, _as(["sales_rep"], rory), [lead_id], tag) == {lead_id}

    # An older assignment arriving late (another copy of the first, under a new event id) ...
    await _assign(leads, _assignment(lead_id, rhea, at))
    assert await _rep_of(leads, lead_id) == rory
    # ... and the very same first event again (older than the stored one): still rory's.
    await produce_envelope(leads.settings.kafka_bootstrap_servers, SALES_EVENTS, original)
    # (the same partition, in order: once this later copy is processed, the repeat was handled)
    await _assign(leads, _assignment(lead_id, rory, at + timedelta(minutes=5)))
    assert await _rep_of(leads, lead_id) == rory
    history = (await leads.client.get(f"/leads/{lead_id}/history", headers=_as(["marketing"], "mia"))).json()
    reps = [c["after"] for e in history["items"] for c in e["changes"] if c["field"] == "assigned_rep"]
    assert reps == [rory, rhea], "each applied assignment is audited once, newest first"


async def test_an_assignment_of_an_unknown_lead_is_dead_lettered(leads: Leads, kafka_bootstrap: str) -> None:
    dlq = await TopicReader(kafka_bootstrap, dead_letter_topic("leads")).start()
    try:
        lead_id = f"ghost-{uuid.uuid4().hex}"
        await produce_envelope(kafka_bootstrap, SALES_EVENTS, _assignment(lead_id, "rhea", utcnow()))

        def parked(records: list[Any]) -> list[Any] | None:
            return [r for r in records if r.key == lead_id.encode()] or None

        (record,) = await dlq.wait_for(parked, what="the dead letter")
        headers = dict(record.headers)
        assert headers["dlq_reason"] == b"unknown_lead"
        assert headers["dlq_source_topic"] == SALES_EVENTS.encode()
    finally:
        await dlq.stop()
