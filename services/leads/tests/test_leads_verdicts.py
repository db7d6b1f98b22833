"""Sales' verdict consumed from crm.sales.lead-verdict: status, loop-closing event,
recycling and re-qualification, unknown leads dead-lettered, stale verdicts ignored."""

from __future__ import annotations

import uuid
from typing import Any, TypeAlias

import pytest
from crm_contracts import Envelope, envelope_for
from crm_contracts.events.sales import LeadVerdictV1, RejectReason, Verdict
from crm_contracts.topics import (
    HANDOFF_RECEIPTS,
    LEAD_QUALIFIED,
    LEAD_VERDICT,
    LEADS_EVENTS,
    dead_letter_topic,
)
from crm_platform.mongo import OUTBOX, PROCESSED
from crm_platform.testing import TopicReader, eventually, produce_envelope

pytestmark = pytest.mark.integration
Leads: TypeAlias = Any  # conftest.Leads (conftest is not importable in importlib mode)


def verdict(lead_id: str, outcome: str, reason: RejectReason | None = None) -> Envelope:
    event = LeadVerdictV1(
        lead_id=lead_id,
        verdict=Verdict(outcome),
        reason_code=reason,
        decided_by="rep-sam",
        note="test verdict",
    )
    return envelope_for(event, source="sales", correlation_id=lead_id)


async def status_becomes(leads: Leads, lead_id: str, status: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        lead = await leads.lead(lead_id)
        return lead if lead["status"] == status else None

    result: dict[str, Any] = await eventually(check, what=f"lead {lead_id} {status}")
    return result


async def test_accepted_verdict_updates_status_and_closes_the_loop(
    leads: Leads, kafka_bootstrap: str
) -> None:
    reader = await TopicReader(kafka_bootstrap, LEADS_EVENTS, HANDOFF_RECEIPTS).start()
    try:
        lead = await leads.qualified_lead()
        env = verdict(lead["id"], "accepted")
        await produce_envelope(kafka_bootstrap, LEAD_VERDICT, env)
        accepted = await status_becomes(leads, lead["id"], "accepted")
        assert accepted["verdict"]["verdict"] == "accepted"
        assert accepted["verdict"]["reason_code"] is None

        def changed(_: list[Any]) -> list[Envelope] | None:
            return [
                e for e in reader.envelopes("lead.status_changed") if e.partition_key == lead["id"]
            ] or None

        (status_event,) = await reader.wait_for(changed, what="lead.status_changed")
        assert status_event.payload == {
            "lead_id": lead["id"],
            "status": "accepted",
            "reason_code": None,
            "source_channel": "webinar",
        }
        assert status_event.causation_id == str(env.event_id)
        assert status_event.correlation_id == lead["id"]

        # department="marketing": the platform receipts the lead-verdict handoff.
        def receipt(_: list[Any]) -> list[Envelope] | None:
            return [
                e
                for e in reader.envelopes("handoff.received")
                if e.payload["handoff_event_id"] == str(env.event_id)
            ] or None

        (rcpt,) = await reader.wait_for(receipt, what="handoff.received receipt")
        assert rcpt.payload["handoff"] == "lead-verdict"
        assert rcpt.payload["to_department"] == "marketing"
    finally:
        await reader.stop()


async def test_rejected_verdict_keeps_the_reason_code(leads: Leads, kafka_bootstrap: str) -> None:
    lead = await leads.qualified_lead()
    await produce_envelope(
        kafka_bootstrap, LEAD_VERDICT, verdict(lead["id"], "rejected", RejectReason.NO_BUDGET)
    )
    rejected = await status_becomes(leads, lead["id"], "rejected")
    assert rejected["verdict"]["reason_code"] == "no_budget"
    # Rejected is final for marketing: more behaviour never hands it over again.
    out = await leads.behave(lead["id"], "trial_signup", "trial_signup")
    assert out["lead"]["status"] == "rejected"
    assert out["qualified_now"] is False
    assert out["lead"]["handoff_count"] == 1


async def test_recycled_lead_is_handed_off_again_after_new_behaviour_crosses_the_threshold(
    leads: Leads, kafka_bootstrap: str
) -> None:
    reader = await TopicReader(kafka_bootstrap, LEAD_QUALIFIED).start()
    try:
        lead = await leads.qualified_lead()
        await produce_envelope(
            kafka_bootstrap, LEAD_VERDICT, verdict(lead["id"], "recycled", RejectReason.BAD_TIMING)
        )
        recycled = await status_becomes(leads, lead["id"], "recycled")
        assert recycled["score"] == 0  # a new scoring cycle
        assert recycled["recycle_count"] == 1
        assert recycled["verdict"]["reason_code"] == "bad_timing"
        assert recycled["behaviour_totals"] == {"form_submit": 1, "trial_signup": 1}

        out = await leads.behave(lead["id"], "trial_signup")
        assert out["lead"]["status"] == "nurturing"  # back to nurturing, not yet to sales
        assert out["qualified_now"] is False
        out = await leads.behave(lead["id"], "form_submit")
        assert out["qualified_now"] is True
        assert out["lead"]["status"] == "qualified"
        assert out["lead"]["handoff_count"] == 2

        def two_handoffs(_: list[Any]) -> list[Envelope] | None:
            envs = [e for e in reader.envelopes("lead.qualified") if e.partition_key == lead["id"]]
            return envs if len(envs) >= 2 else None

        envs = await reader.wait_for(two_handoffs, what="the second lead.qualified")
        assert len(envs) == 2
        second = envs[-1].payload
        assert second["score"] == 60
        assert second["behaviour_summary"] == {"form_submit": 2, "trial_signup": 2}
    finally:
        await reader.stop()


async def test_verdict_for_an_unknown_lead_is_dead_lettered(leads: Leads, kafka_bootstrap: str) -> None:
    dlq = await TopicReader(kafka_bootstrap, dead_letter_topic("leads")).start()
    try:
        lead_id = f"ghost-{uuid.uuid4().hex}"
        await produce_envelope(kafka_bootstrap, LEAD_VERDICT, verdict(lead_id, "accepted"))

        def parked(records: list[Any]) -> list[Any] | None:
            return [r for r in records if r.key == lead_id.encode()] or None

        (record,) = await dlq.wait_for(parked, what="the dead letter")
        headers = dict(record.headers)
        assert headers["dlq_reason"] == b"unknown_lead"
        assert headers["dlq_source_topic"] == LEAD_VERDICT.encode()
        assert lead_id.encode() in headers["dlq_error"]
        assert Envelope.from_bytes(record.value).payload["lead_id"] == lead_id
    finally:
        await dlq.stop()


async def test_verdict_for_a_lead_not_qualified_is_recorded_and_ignored(
    leads: Leads, kafka_bootstrap: str
) -> None:
    lead = (await leads.capture())["lead"]
    await leads.behave(lead["id"], "page_view")
    env = verdict(lead["id"], "accepted")
    await produce_envelope(kafka_bootstrap, LEAD_VERDICT, env)
    db = leads.runtime.db

    async def processed() -> bool:
        return await db[PROCESSED].count_documents({"_id": str(env.event_id)}) == 1

    await eventually(processed, what="the verdict processed")
    stored = await db["verdicts"].find_one({"_id": str(env.event_id)})
    assert stored is not None
    assert stored["applied"] is False
    assert stored["status_before"] == "nurturing"
    assert "not 'qualified'" in stored["ignored_because"]
    after = await leads.lead(lead["id"])
    assert after["status"] == "nurturing"
    assert after["verdict"] is None
    assert await _status_changes(db, lead["id"]) == 0


async def test_a_second_verdict_for_the_same_handoff_is_ignored(leads: Leads, kafka_bootstrap: str) -> None:
    lead = await leads.qualified_lead()
    await produce_envelope(kafka_bootstrap, LEAD_VERDICT, verdict(lead["id"], "accepted"))
    await status_becomes(leads, lead["id"], "accepted")
    late = verdict(lead["id"], "rejected", RejectReason.NO_NEED)
    await produce_envelope(kafka_bootstrap, LEAD_VERDICT, late)
    db = leads.runtime.db

    async def processed() -> bool:
        return await db[PROCESSED].count_documents({"_id": str(late.event_id)}) == 1

    await eventually(processed, what="the late verdict processed")
    assert (await leads.lead(lead["id"]))["status"] == "accepted"
    assert await _status_changes(db, lead["id"]) == 1


async def _status_changes(db: Any, lead_id: str) -> int:
    """The outbox rows holding a ``lead.status_changed`` of this lead: a row of its own, or an
    item of a consumer transaction's batch row (crm_platform.mongo.outbox_rows)."""
    change = {"event_type": "lead.status_changed", "key": lead_id}
    return int(await db[OUTBOX].count_documents({"$or": [change, {"events": {"$elemMatch": change}}]}))
