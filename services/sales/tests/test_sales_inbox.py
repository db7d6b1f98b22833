"""The lead.qualified handoff consumed from its topic: inbox, round-robin, SLA, verdicts,
redelivery, re-qualification after a recycle, and dead letters."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias

import pytest
from crm_contracts import Envelope, envelope_for
from crm_contracts.topics import (
    HANDOFF_RECEIPTS,
    LEAD_QUALIFIED,
    LEAD_VERDICT,
    SALES_EVENTS,
    dead_letter_topic,
)
from crm_platform.mongo import PROCESSED, Tx
from crm_platform.testing import TopicReader, eventually, produce, produce_envelope
from sales import store as repo
from sales.domain.assignment import round_robin
from sales.store import MongoTeamRepository

pytestmark = pytest.mark.integration
Sales: TypeAlias = Any  # conftest.Sales (conftest is not importable in importlib mode)


def make_qualified_again(lead_id: str) -> Any:
    from crm_contracts.events.common import Consent, Contact
    from crm_contracts.events.leads import LeadQualifiedV1

    return LeadQualifiedV1(
        lead_id=lead_id,
        contact=Contact(name="Ada Lovelace", email=f"{lead_id}@example.com"),
        company="Renamed Engines",
        score=80.0,
        threshold=50.0,
        score_reasons=[],
        source_channel="webinar",
        behaviour_summary={},
        consent=Consent(marketing_email=False),
        qualified_at=datetime.now().astimezone(),
    )


def parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts)


def mine(reader: TopicReader, event_type: str, key: str) -> list[Envelope]:
    return [e for e in reader.envelopes(event_type) if e.partition_key == key]


async def counter_of(sales: Sales, item_id: str) -> int:
    doc = await sales.runtime.db[repo.INBOX].find_one({"_id": item_id})
    return int(doc["assignment_history"][0]["counter"])


async def test_qualified_leads_land_in_the_inbox_round_robin_and_are_announced(
    sales: Sales, kafka_bootstrap: str
) -> None:
    a, b = sales.uid("amir"), sales.uid("bea")
    roster = await sales.set_roster(**{a: True, b: True, sales.uid("zed"): False})
    assert roster["rotation"] == sorted([a, b])
    reader = await TopicReader(kafka_bootstrap, SALES_EVENTS, HANDOFF_RECEIPTS).start()
    try:
        first, env1 = await sales.qualify(company="Analytical Engines")
        second, _ = await sales.qualify()
        owners = [first["owner"], second["owner"]]
        assert set(owners) <= {a, b}
        # Each owner is the rotation's pick for the counter value that item took...
        c1, c2 = await counter_of(sales, first["id"]), await counter_of(sales, second["id"])
        assert owners == [round_robin([a, b], c1), round_robin([a, b], c2)]
        # ...and consecutive leads go to different reps (another suite's handoff landing
        # in between could take a counter value: then only the formula above is checked).
        if c2 == c1 + 1:
            assert owners[0] != owners[1]

        # The full handoff payload is kept, with the response due SLA minutes later.
        assert first["status"] == "pending"
        assert first["assigned_by"] == "round_robin"
        assert first["handoff"]["company"] == "Analytical Engines"
        assert first["handoff"]["contact"]["email"] == f"{first['lead_id']}@example.com"
        assert first["handoff"]["score_reasons"][0]["behaviour"] == "trial_signup"
        assert first["handoff"]["behaviour_summary"] == {"trial_signup": 1, "form_submit": 1}
        assert first["handoff"]["consent"]["marketing_email"] is True
        assert first["sla_minutes"] == 60
        due = parse(first["response_due_at"]) - parse(first["received_at"])
        assert due == timedelta(minutes=60)
        assert first["overdue"] is False
        assert first["handoff_number"] == 1
        assert first["verdict"] is None

        # Another sales process on the same broker (a local `make run`, another suite) may
        # handle this handoff too and announce its own assignment: look for ours.
        def assigned(_: list[Any]) -> list[Envelope] | None:
            return [
                e
                for e in mine(reader, "sales.lead_assigned", first["lead_id"])
                if e.payload["owner"] == first["owner"]
            ] or None

        (event,) = await reader.wait_for(assigned, what="sales.lead_assigned")
        assert parse(event.payload["response_due_at"]) == parse(first["response_due_at"])
        assert event.correlation_id == f"journey-{first['lead_id']}"
        assert event.causation_id == str(env1.event_id)

        # department="sales": the platform receipts the lead-qualified handoff.
        def receipt(_: list[Any]) -> list[Envelope] | None:
            return [
                e
                for e in reader.envelopes("handoff.received")
                if e.payload["handoff_event_id"] == str(env1.event_id)
            ] or None

        rcpt = (await reader.wait_for(receipt, what="handoff.received"))[0]
        assert rcpt.payload["handoff"] == "lead-qualified"
        assert rcpt.payload["to_department"] == "sales"
    finally:
        await reader.stop()


async def test_round_robin_counter_is_safe_under_concurrent_assignments(sales: Sales) -> None:
    reps = [sales.uid("cc1"), sales.uid("cc2"), sales.uid("cc3")]
    await sales.set_roster(**dict.fromkeys(reps, True))

    async def take(tx: Tx) -> tuple[int, str | None]:
        team = MongoTeamRepository(tx)
        active = await team.active_rep_ids()
        counter = await team.take_turn()
        return counter, round_robin(active, counter)

    results = await asyncio.gather(*(sales.runtime.store.transaction(take) for _ in range(12)))
    counters = sorted(c for c, _ in results)
    assert len(set(counters)) == 12, "two concurrent assignments used the same counter value"
    assert all(pick == round_robin(reps, c) for c, pick in results)
    if counters == list(range(counters[0], counters[0] + 12)):
        picks = [p for _, p in results]
        assert sorted(picks.count(r) for r in reps) == [4, 4, 4]


async def test_no_active_rep_leaves_the_lead_unassigned_until_a_manager_assigns_it(
    sales: Sales, kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    await sales.set_roster(**{sales.uid("away"): False})
    reader = await TopicReader(kafka_bootstrap, SALES_EVENTS).start()
    try:
        item, _ = await sales.qualify()
        lead = item["lead_id"]
        assert item["owner"] is None
        assert item["assigned_by"] is None
        assert any(
            "no active sales rep" in r.getMessage() and lead in r.getMessage()
            for r in caplog.records
            if r.levelname == "WARNING"
        )
        r = await sales.client.get("/inbox", params={"unassigned": "true"}, headers=sales.manager())
        assert lead in [i["lead_id"] for i in r.json()["items"]]

        # Nobody to hand it to yet; a rep cannot take it; a manager assigns it once a rep is active.
        r = await sales.client.post(f"/inbox/{lead}/assign", json={}, headers=sales.manager())
        assert r.status_code == 422
        r = await sales.client.post(f"/inbox/{lead}/accept", headers=sales.rep("someone"))
        assert r.status_code == 403
        rep = sales.uid("back")
        r = await sales.client.post(f"/inbox/{lead}/assign", json={"owner": rep}, headers=sales.manager())
        assert r.status_code == 422, "only an active rep can be assigned"
        assert r.json()["details"]["owner"] == rep
        r = await sales.client.post(f"/inbox/{lead}/assign", json={"owner": rep}, headers=sales.rep(rep))
        assert r.status_code == 403, "assigning is for managers"
        await sales.activate(rep)
        r = await sales.client.post(f"/inbox/{lead}/assign", json={}, headers=sales.manager())
        assert r.status_code == 200, r.text
        assert r.json()["owner"] == rep
        assert r.json()["assigned_by"] == "round_robin"

        def assigned(_: list[Any]) -> list[Envelope] | None:
            return [e for e in mine(reader, "sales.lead_assigned", lead) if e.payload["owner"] == rep] or None

        (event,) = await reader.wait_for(assigned, what="sales.lead_assigned after manual assignment")
        assert event.correlation_id == f"journey-{lead}"
    finally:
        await reader.stop()


async def test_accept_opens_an_opportunity_and_sends_the_verdict_to_marketing(
    sales: Sales, kafka_bootstrap: str
) -> None:
    rep = sales.uid("rita")
    await sales.activate(rep)
    item, _ = await sales.qualify(company="Babbage & Co")
    lead = item["lead_id"]
    await sales.assign(lead, rep)
    reader = await TopicReader(kafka_bootstrap, LEAD_VERDICT, SALES_EVENTS).start()
    try:
        other = sales.uid("otto")
        r = await sales.client.post(f"/inbox/{lead}/accept", headers=sales.rep(other))
        assert r.status_code == 403, "a rep who is not the owner"
        r = await sales.client.get(f"/inbox/{lead}", headers=sales.rep(other))
        assert r.status_code == 403

        r = await sales.client.post(
            f"/inbox/{lead}/accept", json={"note": "great fit"}, headers=sales.rep(rep)
        )
        assert r.status_code == 200, r.text
        decision = r.json()
        opp = decision["opportunity"]
        assert decision["item"]["status"] == "accepted"
        assert decision["item"]["verdict"]["decided_by"] == rep
        assert decision["item"]["verdict"]["opportunity_id"] == opp["id"]
        assert decision["item"]["responded_within_sla"] is True
        assert opp["stage"] == "qualification"
        assert opp["owner"] == rep
        assert opp["origin"] == "lead"
        assert opp["lead_id"] == lead
        assert opp["account_name"] == "Babbage & Co"
        assert [c["email"] for c in opp["contacts"]] == [f"{lead}@example.com"]
        assert opp["lead_source"] == {"source_channel": "webinar", "campaign": "q1-launch", "score": 72.5}

        def verdict(_: list[Any]) -> list[Envelope] | None:
            return mine(reader, "lead.verdict", lead) or None

        (v,) = await reader.wait_for(verdict, what="lead.verdict on crm.sales.lead-verdict")
        assert v.payload == {
            "lead_id": lead,
            "verdict": "accepted",
            "reason_code": None,
            "note": "great fit",
            "decided_by": rep,
            "opportunity_id": opp["id"],
        }
        assert v.correlation_id == f"journey-{lead}"

        def created(_: list[Any]) -> list[Envelope] | None:
            return mine(reader, "opportunity.created", opp["id"]) or None

        (c,) = await reader.wait_for(created, what="opportunity.created")
        assert c.payload["origin"] == "lead"
        assert c.payload["lead_id"] == lead
        assert c.payload["stage"] == "qualification"
        assert c.correlation_id == f"journey-{lead}"

        assert (await sales.opportunity(opp["id"], sales.rep(rep)))["id"] == opp["id"]
        # A second verdict on the same item: 409, whichever it is.
        for path, body in (("accept", {}), ("reject", {"reason_code": "no_need"}), ("recycle", {})):
            r = await sales.client.post(f"/inbox/{lead}/{path}", json=body, headers=sales.rep(rep))
            assert r.status_code == 409, (path, r.text)
    finally:
        await reader.stop()


async def test_reject_needs_a_known_reason_code(sales: Sales, kafka_bootstrap: str) -> None:
    rep = sales.uid("rex")
    await sales.activate(rep)
    item, _ = await sales.qualify()
    lead = item["lead_id"]
    await sales.assign(lead, rep)
    url, h = f"/inbox/{lead}/reject", sales.rep(rep)
    r = await sales.client.post(url, headers=h)
    assert r.status_code == 422, "no body at all"
    r = await sales.client.post(url, json={"note": "meh"}, headers=h)
    assert r.status_code == 422
    assert "reason_code" in r.json()["message"]
    r = await sales.client.post(url, json={"reason_code": "too_expensive"}, headers=h)
    assert r.status_code == 422
    assert r.json()["fields"][0]["field"] == "body.reason_code"
    assert (await sales.inbox_item(lead))["status"] == "pending"

    reader = await TopicReader(kafka_bootstrap, LEAD_VERDICT).start()
    try:
        r = await sales.client.post(url, json={"reason_code": "no_budget", "note": "next year"}, headers=h)
        assert r.status_code == 200, r.text
        assert r.json()["item"]["status"] == "rejected"
        assert r.json()["opportunity"] is None

        def verdict(_: list[Any]) -> list[Envelope] | None:
            return mine(reader, "lead.verdict", lead) or None

        (v,) = await reader.wait_for(verdict, what="rejected verdict")
        assert v.payload["verdict"] == "rejected"
        assert v.payload["reason_code"] == "no_budget"
        assert v.payload["note"] == "next year"
        assert v.payload["opportunity_id"] is None
    finally:
        await reader.stop()


async def test_a_recycled_lead_qualified_again_gets_a_fresh_item_and_redelivery_does_not_double_it(
    sales: Sales, kafka_bootstrap: str
) -> None:
    rep = sales.uid("rose")
    await sales.activate(rep)
    first, env1 = await sales.qualify()
    lead = first["lead_id"]
    await sales.assign(lead, rep)

    # The same event delivered again (e.g. the producer retried): the ledger drops it.
    await produce_envelope(kafka_bootstrap, LEAD_QUALIFIED, env1)

    async def deduplicated() -> bool:
        return await sales.runtime.db[PROCESSED].count_documents({"_id": str(env1.event_id)}) == 1

    await eventually(deduplicated, what="ledger entry")

    reader = await TopicReader(kafka_bootstrap, LEAD_VERDICT).start()
    try:
        r = await sales.client.post(
            f"/inbox/{lead}/recycle", json={"reason_code": "bad_timing"}, headers=sales.rep(rep)
        )
        assert r.status_code == 200, r.text
        assert r.json()["item"]["status"] == "recycled"

        def verdict(_: list[Any]) -> list[Envelope] | None:
            return mine(reader, "lead.verdict", lead) or None

        (v,) = await reader.wait_for(verdict, what="recycled verdict")
        assert v.payload["verdict"] == "recycled"
        assert v.payload["reason_code"] == "bad_timing"
    finally:
        await reader.stop()

    # Marketing nurtures it and qualifies it again: a new handoff, a fresh inbox entry.
    second, env2 = await sales.qualify(lead)
    assert second["id"] == str(env2.event_id) != first["id"]
    assert second["status"] == "pending"
    assert second["handoff_number"] == 2
    assert await sales.runtime.db[repo.INBOX].count_documents({"lead_id": lead}) == 2
    r = await sales.client.get("/inbox", params={"status": "recycled"}, headers=sales.manager())
    assert lead in [i["lead_id"] for i in r.json()["items"]]


async def test_the_inbox_shows_reps_their_own_items_and_flags_overdue_ones(sales: Sales) -> None:
    r1, r2 = sales.uid("ivy"), sales.uid("ian")
    await sales.activate(r1, r2)
    mine_item, _ = await sales.qualify()
    theirs, _ = await sales.qualify()
    await sales.assign(mine_item["lead_id"], r1)
    await sales.assign(theirs["lead_id"], r2)
    # Make one item late: its response was due an hour ago.
    await sales.runtime.db[repo.INBOX].update_one(
        {"_id": mine_item["id"]},
        {"$set": {"response_due_at": datetime.fromisoformat(mine_item["received_at"]) - timedelta(hours=1)}},
    )

    r = await sales.client.get("/inbox", headers=sales.rep(r1))
    assert r.status_code == 200
    items = r.json()["items"]
    assert [i["lead_id"] for i in items] == [mine_item["lead_id"]]
    assert items[0]["overdue"] is True
    r = await sales.client.get("/inbox", params={"owner": r2}, headers=sales.rep(r1))
    assert [i["lead_id"] for i in r.json()["items"]] == [mine_item["lead_id"]], "a rep cannot widen"

    r = await sales.client.get("/inbox", params={"overdue": "true"}, headers=sales.manager())
    overdue = [i["lead_id"] for i in r.json()["items"]]
    assert mine_item["lead_id"] in overdue
    assert theirs["lead_id"] not in overdue
    r = await sales.client.get("/inbox", params={"owner": r2, "status": "pending"}, headers=sales.manager())
    assert [i["lead_id"] for i in r.json()["items"]] == [theirs["lead_id"]]
    r = await sales.client.get("/inbox", params={"status": "lost"}, headers=sales.manager())
    assert r.status_code == 422
    r = await sales.client.get("/inbox/no-such-lead", headers=sales.manager())
    assert r.status_code == 404


async def test_the_sla_is_configurable_for_new_leads(sales: Sales) -> None:
    r = await sales.client.get("/config", headers=sales.rep("anyone"))
    assert r.status_code == 200
    before = r.json()["lead_response_sla_minutes"]
    r = await sales.client.put("/config", json={"lead_response_sla_minutes": 5}, headers=sales.rep("x"))
    assert r.status_code == 403
    for bad in (0, 100_000, "soon"):
        r = await sales.client.put(
            "/config", json={"lead_response_sla_minutes": bad}, headers=sales.manager()
        )
        assert r.status_code == 422, bad
    r = await sales.client.put("/config", json={"lead_response_sla_minutes": 5}, headers=sales.manager())
    assert r.status_code == 200, r.text
    assert r.json()["lead_response_sla_minutes"] == 5
    assert r.json()["updated_by"] == "mona"
    try:
        item, _ = await sales.qualify()
        assert item["sla_minutes"] == 5
        assert parse(item["response_due_at"]) - parse(item["received_at"]) == timedelta(minutes=5)
    finally:
        await sales.client.put("/config", json={"lead_response_sla_minutes": before}, headers=sales.manager())


async def test_malformed_and_invalid_handoffs_land_on_the_sales_dead_letter_topic(
    sales: Sales, kafka_bootstrap: str
) -> None:
    dlq = dead_letter_topic("sales")
    assert dlq == "crm.dlq.sales"
    reader = await TopicReader(kafka_bootstrap, dlq).start()
    try:
        garbage = f"not json {sales.uid('x')}".encode()
        await produce(
            kafka_bootstrap,
            LEAD_QUALIFIED,
            garbage,
            key=b"garbage",
            headers=[("event_type", b"lead.qualified")],
        )
        lead = sales.uid("broken")
        bad = Envelope(
            event_type="lead.qualified",
            schema_version=1,
            occurred_at=datetime.now().astimezone(),
            source="leads",
            correlation_id=lead,
            partition_key=lead,
            payload={"lead_id": lead, "company": "no contact, no score"},
        )
        await produce_envelope(kafka_bootstrap, LEAD_QUALIFIED, bad)

        def headers_of(value: bytes) -> dict[str, bytes] | None:
            for rec in reader.records:
                h = dict(rec.headers or ())
                if rec.value == value and h.get("dlq_consumer_group") == sales.settings.group_id.encode():
                    return h
            return None

        h1 = await reader.wait_for(lambda _: headers_of(garbage), what="malformed dead letter")
        assert h1["dlq_reason"] == b"malformed"
        assert h1["dlq_source_topic"] == LEAD_QUALIFIED.encode()
        h2 = await reader.wait_for(lambda _: headers_of(bad.to_bytes()), what="schema_invalid dead letter")
        assert h2["dlq_reason"] == b"schema_invalid"
    finally:
        await reader.stop()
    assert await sales.inbox_item(lead) is None


async def test_concurrent_verdicts_on_one_item_give_one_verdict(sales: Sales, kafka_bootstrap: str) -> None:
    rep = sales.uid("cora")
    await sales.activate(rep)
    item, _ = await sales.qualify()
    lead = item["lead_id"]
    await sales.assign(lead, rep)
    h = sales.rep(rep)
    results = await asyncio.gather(
        sales.client.post(f"/inbox/{lead}/accept", headers=h),  # no body: the note is optional
        sales.client.post(f"/inbox/{lead}/accept", headers=sales.manager()),
        sales.client.post(f"/inbox/{lead}/reject", json={"reason_code": "duplicate"}, headers=h),
    )
    codes = sorted(r.status_code for r in results)
    assert codes == [200, 409, 409], [r.text for r in results]
    winner = next(r.json() for r in results if r.status_code == 200)
    opps = await sales.runtime.db[repo.OPPORTUNITIES].count_documents({"lead_id": lead})
    assert opps == (1 if winner["item"]["status"] == "accepted" else 0)


async def test_a_lead_handed_off_again_while_pending_refreshes_its_item(sales: Sales) -> None:
    rep = sales.uid("pia")
    await sales.activate(rep)
    first, env1 = await sales.qualify()
    lead = first["lead_id"]
    await sales.assign(lead, rep)
    env2 = envelope_for(make_qualified_again(lead), source="leads", correlation_id=f"journey-{lead}")
    await produce_envelope(sales.settings.kafka_bootstrap_servers, LEAD_QUALIFIED, env2)

    async def refreshed() -> dict[str, Any] | None:
        doc = await sales.runtime.db[repo.INBOX].find_one({"_id": first["id"]})
        return doc if doc and str(env2.event_id) in doc["handoff_event_ids"] else None

    doc = await eventually(refreshed, what="pending item refreshed")
    assert doc["handoff"]["company"] == "Renamed Engines"
    assert doc["owner"] == rep, "the owner and the due date stay"
    assert await sales.runtime.db[repo.INBOX].count_documents({"lead_id": lead}) == 1
    item = await sales.inbox_item(lead)
    assert item is not None
    assert item["id"] == str(env1.event_id)
    assert item["company"] == "Renamed Engines"


async def test_a_re_sent_handoff_older_than_the_inbox_item_does_not_resurrect_the_lead(
    sales: Sales, kafka_bootstrap: str
) -> None:
    """The sender re-sends a handoff whose first publish was lost; it arrives after a newer one."""
    rep = sales.uid("otto")
    await sales.activate(rep)
    lead = sales.uid("lead")
    stale = envelope_for(
        make_qualified_again(lead),
        source="leads",
        correlation_id=f"journey-{lead}",
        occurred_at=datetime.now(UTC) - timedelta(minutes=5),
    )
    newer, _ = await sales.qualify(lead)
    await sales.assign(lead, rep)
    r = await sales.client.post(
        f"/inbox/{lead}/recycle", json={"reason_code": "bad_timing"}, headers=sales.rep(rep)
    )
    assert r.status_code == 200, r.text

    await produce_envelope(kafka_bootstrap, LEAD_QUALIFIED, stale)

    async def handled() -> bool:
        return await sales.runtime.db[PROCESSED].count_documents({"_id": str(stale.event_id)}) == 1

    await eventually(handled, what="the stale handoff handled")
    items = await sales.runtime.db[repo.INBOX].find({"lead_id": lead}).to_list()
    assert [i["_id"] for i in items] == [newer["id"]], "no second inbox item from the stale handoff"
    assert items[0]["status"] == "recycled"
    assert items[0]["superseded_event_ids"] == [str(stale.event_id)]
