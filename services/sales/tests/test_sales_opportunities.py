"""Opportunities: stage moves and required fields, won -> deal.won, lost, activities,
own-book visibility and the forecast."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias

import pytest
from crm_contracts import Envelope
from crm_contracts.topics import DEAL_WON, SALES_EVENTS
from crm_platform.testing import TopicReader, opened_payload

pytestmark = pytest.mark.integration
Sales: TypeAlias = Any  # conftest.Sales (conftest is not importable in importlib mode)

PRODUCTS = [
    {"sku": "CRM-ENT", "name": "CRM Enterprise seat", "quantity": 50, "unit_price": 40.0},
    {"sku": "ONB", "name": "Onboarding package", "quantity": 1, "unit_price": 3000.0},
]


def mine(reader: TopicReader, event_type: str, key: str) -> list[Envelope]:
    return [e for e in reader.envelopes(event_type) if e.partition_key == key]


async def test_stage_moves_are_refused_while_required_fields_are_missing(
    sales: Sales, kafka_bootstrap: str
) -> None:
    rep = sales.uid("sara")
    opp = await sales.opportunity_for(rep)
    oid = opp["id"]
    reader = await TopicReader(kafka_bootstrap, SALES_EVENTS).start()
    try:
        r = await sales.move(oid, "discovery", rep)
        assert r.status_code == 422
        assert r.json()["details"]["missing"] == ["budget", "decision_maker"]
        assert "budget" in r.json()["message"]
        r = await sales.move(oid, "discovery", rep, fields={"budget": 20000})
        assert r.json()["details"]["missing"] == ["decision_maker"]
        # Straight to won: everything won needs is listed.
        r = await sales.move(oid, "won", rep, fields={"amount": 5000})
        assert r.status_code == 422
        assert r.json()["details"]["missing"] == ["products", "commitments"]
        # Badly typed fields are a 422 naming them, before any rule.
        bad: dict[str, Any]
        for bad in (
            {"amount": -1},
            {"products": []},
            {"decision_maker": None},
            {"close_date": "soon"},
            {"Weird-Name": 1},
            {"contacts": []},
            {"custom": {"nested": True}},
        ):
            r = await sales.move(oid, "discovery", rep, fields=bad)
            assert r.status_code == 422, (bad, r.text)
        r = await sales.move(oid, "signed", rep)
        assert r.status_code == 422
        assert r.json()["details"]["stages"][0] == "qualification"
        r = await sales.move(oid, "qualification", rep)
        assert r.status_code == 409, "already there"
        assert (await sales.opportunity(oid))["stage"] == "qualification"

        r = await sales.move(oid, "discovery", rep, fields={"budget": 20000, "decision_maker": "CFO"})
        assert r.status_code == 200, r.text
        moved = r.json()
        assert moved["stage"] == "discovery"
        assert moved["fields"] == {"budget": 20000.0, "decision_maker": "CFO"}
        assert [h["to_stage"] for h in moved["stage_history"]] == ["qualification", "discovery"]

        def changed(_: list[Any]) -> list[Envelope] | None:
            return mine(reader, "opportunity.stage_changed", oid) or None

        (event,) = await reader.wait_for(changed, what="opportunity.stage_changed")
        assert event.payload == {
            "opportunity_id": oid,
            "from_stage": "qualification",
            "to_stage": "discovery",
            "owner": rep,
            "amount": None,
        }
        assert event.correlation_id == f"journey-{opp['lead_id']}"

        # Fields given earlier count: proposal only needs what is still missing.
        r = await sales.client.patch(
            f"/opportunities/{oid}", json={"fields": {"amount": 5000}}, headers=sales.rep(rep)
        )
        assert r.status_code == 200, r.text
        r = await sales.move(oid, "proposal", rep)
        assert r.json()["details"]["missing"] == ["products"]
    finally:
        await reader.stop()


async def test_a_won_deal_is_handed_to_customer_success_with_its_commitments(
    sales: Sales, kafka_bootstrap: str
) -> None:
    rep = sales.uid("will")
    opp = await sales.opportunity_for(rep, company="Difference Engines AG")
    oid = opp["id"]
    steps: list[tuple[str, dict[str, Any]]] = [
        ("discovery", {"budget": 60000, "decision_maker": "COO"}),
        ("proposal", {"amount": 5000, "products": PRODUCTS}),
        ("negotiation", {"close_date": "2026-06-30"}),
    ]
    for stage, fields in steps:
        r = await sales.move(oid, stage, rep, fields=fields)
        assert r.status_code == 200, (stage, r.text)

    reader = await TopicReader(kafka_bootstrap, DEAL_WON, SALES_EVENTS).start()
    try:
        due = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
        won_fields = {
            "amount": 5000,
            "commitments": [
                {"description": "SSO integration live by go-live", "due_date": due.isoformat()},
                {"description": "Dedicated onboarding manager"},
            ],
            "contract_months": 24,
            "contract_start": "2026-07-01",
        }
        extra = {"name": "Charles Babbage", "email": "charles@example.com", "role": "COO"}
        r = await sales.move(oid, "won", rep, fields=won_fields, contacts=[extra])
        assert r.status_code == 200, r.text
        won = r.json()
        assert won["status"] == "won"
        assert won["won_at"] is not None
        commitments = won["commitments"]
        assert [c["description"] for c in commitments] == [
            "SSO integration live by go-live",
            "Dedicated onboarding manager",
        ]
        assert all(c["commitment_id"] for c in commitments)
        assert len({c["commitment_id"] for c in commitments}) == 2
        assert not any(c["flagged"] for c in commitments)

        def deal(_: list[Any]) -> list[Envelope] | None:
            return mine(reader, "deal.won", oid) or None

        (event,) = await reader.wait_for(deal, what="deal.won on crm.sales.deal-won")
        p = event.payload
        assert p["deal_id"] == oid
        assert p["lead_id"] == opp["lead_id"]
        assert p["account_name"] == "Difference Engines AG"
        assert p["sales_owner"] == rep
        assert p["value"] == {"amount": 5000.0, "currency": "EUR"}
        assert p["products"] == PRODUCTS
        assert [c["commitment_id"] for c in p["commitments"]] == [c["commitment_id"] for c in commitments]
        assert datetime.fromisoformat(p["commitments"][0]["due_date"]) == due
        assert p["commitments"][1]["due_date"] is None
        opened = await opened_payload(sales.runtime.db, event)  # the contacts are sealed (issue 9)
        emails = [c["email"] for c in opened["contacts"]]
        assert emails == [f"{opp['lead_id']}@example.com", "charles@example.com"]
        assert event.correlation_id == f"journey-{opp['lead_id']}"
        assert event.schema_version == 3  # v2 (the contract term) with the contacts sealed
        assert p["term"] == {
            "start": "2026-07-01T00:00:00Z",
            "months": 24,
            "renewal_date": "2028-07-01T00:00:00Z",
            "value": {"amount": 5000.0, "currency": "EUR"},
        }
        (changed,) = await reader.wait_for(
            lambda _: (
                [e for e in mine(reader, "opportunity.stage_changed", oid) if e.payload["to_stage"] == "won"]
                or None
            ),
            what="stage_changed to won",
        )
        assert changed.payload["to_stage"] == "won"
        assert changed.payload["amount"] == 5000.0
    finally:
        await reader.stop()

    # Closed means closed: no move out of won, no field edits.
    r = await sales.move(oid, "negotiation", rep)
    assert r.status_code == 409
    r = await sales.move(oid, "lost", rep, fields={"lost_reason": "changed mind"})
    assert r.status_code == 409
    r = await sales.client.patch(
        f"/opportunities/{oid}", json={"fields": {"amount": 1}}, headers=sales.rep(rep)
    )
    assert r.status_code == 409


async def test_won_needs_commitments_given_even_when_there_are_none(sales: Sales) -> None:
    rep = sales.uid("wren")
    opp = await sales.opportunity_for(rep)
    oid = opp["id"]
    r = await sales.move(oid, "won", rep, fields={"amount": 100, "products": PRODUCTS[:1]})
    assert r.status_code == 422
    assert r.json()["details"]["missing"] == ["commitments"]
    # A refused move stores nothing: the fields are given again with the commitments.
    r = await sales.move(
        oid,
        "won",
        rep,
        fields={"amount": 100, "products": PRODUCTS[:1], "commitments": [], "currency": "usd"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["commitments"] == []
    assert r.json()["currency"] == "USD"


async def test_a_lost_opportunity_needs_a_reason_and_is_announced(sales: Sales, kafka_bootstrap: str) -> None:
    rep = sales.uid("lou")
    opp = await sales.opportunity_for(rep)
    oid = opp["id"]
    r = await sales.move(oid, "lost", rep)
    assert r.status_code == 422
    assert r.json()["details"]["missing"] == ["lost_reason"]
    reader = await TopicReader(kafka_bootstrap, SALES_EVENTS).start()
    try:
        r = await sales.move(oid, "lost", rep, fields={"lost_reason": "went with a competitor"})
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "lost"
        assert r.json()["lost_reason"] == "went with a competitor"
        (lost,) = await reader.wait_for(
            lambda _: mine(reader, "opportunity.lost", oid) or None, what="opportunity.lost"
        )
        assert lost.payload == {"opportunity_id": oid, "reason": "went with a competitor", "owner": rep}
    finally:
        await reader.stop()
    r = await sales.move(oid, "qualification", rep)
    assert r.status_code == 409


async def test_activities_are_logged_against_an_opportunity(sales: Sales, kafka_bootstrap: str) -> None:
    rep = sales.uid("alma")
    opp = await sales.opportunity_for(rep)
    oid, url, h = opp["id"], f"/opportunities/{opp['id']}/activities", sales.rep(rep)
    reader = await TopicReader(kafka_bootstrap, SALES_EVENTS).start()
    try:
        yesterday = (datetime.now(UTC) - timedelta(days=1)).isoformat()
        r = await sales.client.post(
            url, json={"type": "call", "summary": "Intro call", "occurred_at": yesterday}, headers=h
        )
        assert r.status_code == 201, r.text
        call = r.json()
        assert call["logged_by"] == rep
        r = await sales.client.post(
            url, json={"type": "quote", "summary": "Quote v1", "amount": 4800}, headers=h
        )
        assert r.status_code == 201, r.text
        quote = r.json()
        assert quote["amount"] == 4800.0
        assert quote["currency"] == "EUR"
        for bad in (
            {"type": "email", "summary": "x", "amount": 5},  # only quotes carry an amount
            {"type": "fax", "summary": "x"},
            {"type": "call"},
            {"type": "visit", "summary": "x", "occurred_at": "2999-01-01T00:00:00Z"},
        ):
            r = await sales.client.post(url, json=bad, headers=h)
            assert r.status_code == 422, (bad, r.text)
        r = await sales.client.post(
            url, json={"type": "visit", "summary": "x"}, headers=sales.rep("intruder")
        )
        assert r.status_code == 403

        def logged(_: list[Any]) -> list[Envelope] | None:
            found = mine(reader, "opportunity.activity_logged", oid)
            return found if len(found) >= 2 else None

        events = await reader.wait_for(logged, what="opportunity.activity_logged x2")
        assert {e.payload["activity_type"] for e in events} == {"call", "quote"}
        assert {e.payload["activity_id"] for e in events} == {call["id"], quote["id"]}
        assert all(e.payload["owner"] == rep for e in events)
    finally:
        await reader.stop()
    detail = await sales.opportunity(oid, h)
    assert [a["id"] for a in detail["activities"]] == [quote["id"], call["id"]]  # newest first
    assert detail["activity_count"] == 2


async def test_reps_see_only_their_own_book_and_managers_the_team(sales: Sales) -> None:
    a, b = sales.uid("ann"), sales.uid("bob")
    opp_a = await sales.opportunity_for(a)
    opp_b = await sales.opportunity_for(b)

    # Another rep's opportunity is forbidden (403, documented), for reads and writes alike.
    r = await sales.client.get(f"/opportunities/{opp_b['id']}", headers=sales.rep(a))
    assert r.status_code == 403
    assert r.json()["error"] == "forbidden"
    r = await sales.move(opp_b["id"], "discovery", a, fields={"budget": 1, "decision_maker": "x"})
    assert r.status_code == 403
    r = await sales.client.get("/opportunities/nope", headers=sales.rep(a))
    assert r.status_code == 404

    r = await sales.client.get("/opportunities", headers=sales.rep(a))
    assert [o["id"] for o in r.json()["items"]] == [opp_a["id"]]
    r = await sales.client.get("/opportunities", params={"owner": b}, headers=sales.rep(a))
    assert [o["id"] for o in r.json()["items"]] == [opp_a["id"]], "a rep cannot widen their view"

    r = await sales.client.get("/opportunities", params={"limit": 200}, headers=sales.manager())
    ids = [o["id"] for o in r.json()["items"]]
    assert {opp_a["id"], opp_b["id"]} <= set(ids)
    r = await sales.client.get("/opportunities", params={"owner": b}, headers=sales.manager())
    assert [o["id"] for o in r.json()["items"]] == [opp_b["id"]]
    assert (await sales.opportunity(opp_b["id"]))["owner"] == b  # managers open anyone's

    # A manager may move a rep's opportunity.
    r = await sales.client.post(
        f"/opportunities/{opp_b['id']}/stage",
        json={"stage": "discovery", "fields": {"budget": 1, "decision_maker": "x"}},
        headers=sales.manager(),
    )
    assert r.status_code == 200, r.text

    r = await sales.client.get("/opportunities", headers=sales.headers("marketing", "mia"))
    assert r.status_code == 403
    r = await sales.client.get("/opportunities")
    assert r.status_code == 401


async def test_forecast_weighs_pipeline_value_by_stage_probability(sales: Sales) -> None:
    rep = sales.uid("fay")
    first = await sales.opportunity_for(rep)
    second = await sales.opportunity_for(rep)
    third = await sales.opportunity_for(rep)
    r = await sales.client.patch(
        f"/opportunities/{first['id']}", json={"fields": {"amount": 1000}}, headers=sales.rep(rep)
    )
    assert r.status_code == 200
    r = await sales.move(second["id"], "proposal", rep, fields={"amount": 4000, "products": PRODUCTS})
    assert r.status_code == 200
    r = await sales.move(
        third["id"], "won", rep, fields={"amount": 2500, "products": PRODUCTS, "commitments": []}
    )
    assert r.status_code == 200

    r = await sales.client.get("/forecast", headers=sales.rep(rep))
    assert r.status_code == 200, r.text
    f = r.json()
    assert f["scope"] == "own"
    assert f["owner"] == rep
    rows = {s["stage"]: s for s in f["stages"]}
    assert [s["stage"] for s in f["stages"]] == [
        "qualification",
        "discovery",
        "proposal",
        "negotiation",
        "won",
        "lost",
    ]
    assert (rows["qualification"]["count"], rows["qualification"]["value"]) == (1, 1000.0)
    assert rows["qualification"]["weighted"] == 100.0
    assert (rows["proposal"]["value"], rows["proposal"]["weighted"]) == (4000.0, 2000.0)
    assert rows["won"]["value"] == 2500.0
    assert f["open_count"] == 2
    assert f["open_value"] == 5000.0
    assert f["weighted_open"] == 2100.0
    assert f["won_value"] == 2500.0
    assert f["weighted_forecast"] == 4600.0
    assert f["currencies"] == ["EUR"]

    # A rep asking for someone else's figures still gets their own.
    r = await sales.client.get("/forecast", params={"owner": "someone"}, headers=sales.rep(rep))
    assert r.json()["owner"] == rep
    # Managers and analysts see the team (or one rep).
    r = await sales.client.get("/forecast", headers=sales.manager())
    team = r.json()
    assert team["scope"] == "team"
    assert team["owner"] is None
    assert team["weighted_forecast"] >= 4600.0
    r = await sales.client.get("/forecast", params={"owner": rep}, headers=sales.headers("analyst", "ana"))
    assert r.status_code == 200
    assert r.json()["weighted_forecast"] == 4600.0
    assert r.json()["scope"] == "rep"
    r = await sales.client.get("/forecast", headers=sales.headers("marketing", "mia"))
    assert r.status_code == 403


async def test_identity_is_the_tokens_sub_never_its_display_name(sales: Sales) -> None:
    """Two reps with the same display name, and a token whose ``name`` claim is another
    rep's user id, reach only their own book: ownership is the ``sub``."""
    owner, twin, impostor = sales.uid("ann"), sales.uid("ann"), sales.uid("ivy")
    shared_name = "Ann Example"
    await sales.activate(owner)
    item, _ = await sales.qualify()
    if item["owner"] != owner:
        await sales.assign(item["lead_id"], owner)
    as_owner = sales.headers("sales_rep", owner, shared_name)
    r = await sales.client.post(f"/inbox/{item['lead_id']}/accept", json={}, headers=as_owner)
    assert r.status_code == 200, r.text
    opp_id = r.json()["opportunity"]["id"]
    r = await sales.client.get(f"/opportunities/{opp_id}", headers=as_owner)
    assert r.status_code == 200, r.text
    assert r.json()["owner"] == owner

    for other in (
        sales.headers("sales_rep", twin, shared_name),  # same display name, another user
        sales.headers("sales_rep", impostor, owner),  # display name = the owner's user id
    ):
        r = await sales.client.get(f"/opportunities/{opp_id}", headers=other)
        assert r.status_code == 403, r.text
        r = await sales.client.get(f"/inbox/{item['lead_id']}", headers=other)
        assert r.status_code == 403, r.text
        r = await sales.client.get("/opportunities", headers=other)
        assert opp_id not in [o["id"] for o in r.json()["items"]]
        r = await sales.client.get("/forecast", headers=other)
        assert r.status_code == 200, r.text
        assert (r.json()["scope"], r.json()["open_count"]) == ("own", 0)
        assert r.json()["owner"] != owner
