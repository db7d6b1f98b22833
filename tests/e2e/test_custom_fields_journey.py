"""Custom fields end to end (issue 9), through the gateway only, every service and the faust
worker as separate processes on the real broker and mongod: an admin defines a lead's custom
fields at marketing, marketing captures leads with values, the 422 names a value that does not
fit, and analytics' KPIs break the leads down by the choice field from ``lead.captured`` v2's
extension map (the text field never reaches analytics)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from crm_platform.devinfra.journey import Gateway, JourneyError, onboarded_account, until, win

pytestmark = pytest.mark.e2e


def test_a_custom_choice_field_reaches_analytics_breakdown(gw: Gateway) -> None:
    run = uuid.uuid4().hex[:6]
    key, note = f"e2e_{run}", f"e2e_note_{run}"
    fields = [  # optional: other tests of the session capture leads without them
        {"key": key, "label": "Segment", "type": "choice", "choices": ["smb", "enterprise"]},
        {"key": note, "label": "Note", "type": "text"},
    ]
    with pytest.raises(JourneyError, match="403"):
        gw.call("maria", "PUT", "/api/leads/custom-fields/lead", json={"fields": fields})
    gw.call("admin", "PUT", "/api/leads/custom-fields/lead", json={"fields": fields})
    defined = gw.get("maria", "/api/leads/custom-fields/lead")
    assert [f["key"] for f in defined["fields"]] == [key, note]

    def capture(segment: str) -> dict[str, Any]:
        body = {
            "name": "Ada",
            "email": f"cf-{uuid.uuid4().hex[:10]}@example.com",
            "source_channel": f"e2e-cf-{run}",
            "consent": {"marketing_email": True},
            "custom": {key: segment, note: "likes tea"},
        }
        return dict(gw.call("maria", "POST", "/api/leads/leads", json=body)["lead"])

    with pytest.raises(JourneyError, match=rf"422.*body\.custom\.{key}"):
        capture("huge")
    leads = [capture("enterprise"), capture("enterprise"), capture("smb")]
    assert leads[0]["custom"] == {key: "enterprise", note: "likes tea"}
    found = gw.get("maria", f"/api/leads/leads?cf={key}=smb&limit=200")
    assert [x["id"] for x in found["items"]] == [leads[2]["id"]]

    def breakdown() -> dict[str, Any] | None:
        lead_fields = gw.get("eve", "/api/analytics/kpis").get("custom_fields", {}).get("lead", {})
        figures = lead_fields.get(key)
        return figures if figures and figures["count"] >= 3 else None

    figures = until(breakdown, timeout=90, what="analytics' breakdown by the custom field")
    assert figures == {
        "type": "choice",
        "count": 3,
        "values": {"enterprise": 2, "smb": 1},
        "sum": None,
        "sum_by_currency": None,
        "earliest": None,
        "latest": None,
    }
    every = gw.get("eve", "/api/analytics/kpis")["custom_fields"]["lead"]
    assert note not in every, "text fields may hold personal data: they never leave marketing"


def test_opportunity_and_ticket_custom_fields_reach_analytics(gw: Gateway) -> None:
    """Sales' opportunity and the service desk's ticket carry their custom fields through
    ``opportunity.created`` v3 and ``ticket.opened`` v2 to analytics' breakdown."""
    run = uuid.uuid4().hex[:6]
    deal_type, seats, component, caller = f"dt_{run}", f"seats_{run}", f"comp_{run}", f"caller_{run}"
    gw.call("admin", "PUT", "/api/sales/custom-fields/opportunity", json={"fields": [
        {"key": deal_type, "label": "Deal type", "type": "choice", "choices": ["new", "renewal"]},
        {"key": seats, "label": "Seats", "type": "number", "integer": True},
    ]})  # fmt: skip
    gw.call("admin", "PUT", "/api/service-desk/custom-fields/ticket", json={"fields": [
        {"key": component, "label": "Component", "type": "choice", "choices": ["billing", "sso"]},
        {"key": caller, "label": "Caller", "type": "text"},
    ]})  # fmt: skip
    account = gw.call(
        "rita", "POST", "/api/sales/accounts", json={"name": f"CF Co {run}", "source": "referral"}
    )
    body = {"account_id": account["id"], "source": "referral", "custom": {deal_type: "new", seats: 40}}
    with pytest.raises(JourneyError, match=rf"422.*body\.custom\.{seats}"):
        gw.call("rita", "POST", "/api/sales/opportunities", json={**body, "custom": {seats: 2.5}})
    opp = gw.call("rita", "POST", "/api/sales/opportunities", json=body)
    assert opp["custom"] == {deal_type: "new", seats: 40}
    found = gw.get("rita", f"/api/sales/opportunities?cf={deal_type}=new")
    assert [o["id"] for o in found["items"]] == [opp["id"]]
    win(gw, "rita", opp["id"], timeout=60)
    desk_account = onboarded_account(gw, opp["id"], timeout=60)
    ticket_body = {
        "account_id": desk_account["account_id"],
        "subject": "Invoice",
        "request": "Wrong VAT",
        "custom": {component: "billing", caller: "Bobby"},
    }
    ticket = gw.call("sven", "POST", "/api/service-desk/tickets", json=ticket_body)
    assert ticket["custom"] == {component: "billing", caller: "Bobby"}

    def figures() -> tuple[Any, Any] | None:
        kpis = gw.get("eve", "/api/analytics/kpis").get("custom_fields", {})
        opp_figures = kpis.get("opportunity", {}).get(deal_type)
        ticket_figures = kpis.get("ticket", {}).get(component)
        return (kpis, ticket_figures) if opp_figures and ticket_figures else None

    kpis, ticket_figures = until(
        figures, timeout=90, what="analytics' breakdown of opportunities and tickets"
    )
    assert kpis["opportunity"][deal_type]["values"] == {"new": 1}
    assert kpis["opportunity"][seats]["sum"] == 40
    assert ticket_figures["values"] == {"billing": 1}
    assert caller not in kpis["ticket"], "text fields never leave the service desk"
