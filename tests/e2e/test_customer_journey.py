"""The whole journey, lead to customer, through the gateway only, over real HTTP,
with every service and the faust worker running as separate processes."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from crm_platform.devinfra.journey import Gateway, run_journey, until
from crm_platform.pseudonym import DEV_PSEUDONYM_KEY, pseudonym

pytestmark = pytest.mark.e2e

HANDOFFS_WITH_TRAFFIC = (
    "lead-qualified",
    "lead-verdict",
    "commitment-review-requested",
    "commitment-review-completed",
    "deal-won",
    "upsell-spotted",
)


def test_lead_to_customer_and_back_to_sales(gw: Gateway) -> None:
    channel = f"e2e-{uuid.uuid4().hex[:6]}"
    journey = run_journey(gw, channel, timeout=60)

    lead = gw.get("maria", f"/api/leads/leads/{journey.lead_id}")
    assert lead["status"] == "accepted"
    assert lead["score"] >= lead["threshold"]
    # Field-level rules through the gateway: the analyst gets the person pseudonymised by leads,
    # once (the gateway forwards the answer as it is), with the install's (here: development) key.
    seen = gw.get("ana", f"/api/leads/leads/{journey.lead_id}")
    assert seen["email"] == pseudonym("email", lead["email"], DEV_PSEUDONYM_KEY) != lead["email"]
    assert seen["name"] == pseudonym("name", lead["name"], DEV_PSEUDONYM_KEY)
    assert (seen["status"], seen["score"]) == (lead["status"], lead["score"])

    won = gw.get(journey.owner, f"/api/sales/opportunities/{journey.opportunity_id}")
    assert won["status"] == "won"
    assert [c["description"] for c in won["commitments"]] == [
        "Data migration from the legacy CRM within 30 days",
        "Dedicated onboarding workshop",
    ]
    # Customer success reviewed what sales promised before the win (the CSM approved each).
    review = won["commitment_review"]
    assert (review["status"], review["reviewed_by"]) == ("approved", gw.user_ids["cora"])
    assert review["commitment_ids"] == [c["commitment_id"] for c in won["commitments"]]
    assert [d["decision"] for d in review["decisions"]] == ["approved", "approved"]

    account = gw.get("sven", f"/api/service-desk/accounts/{journey.account_id}")
    assert account["deal_id"] == journey.opportunity_id
    # Owners and CSMs are user ids (the token's sub), never usernames.
    assert account["sales_owner"] == journey.owner_id == gw.user_ids[journey.owner]
    assert account["csm"] == gw.user_ids["cora"]
    assert len(account["commitments"]) == 2, "what sales promised travels with the deal"

    ticket = gw.get("sven", f"/api/service-desk/tickets/{journey.ticket_id}")
    assert ticket["status"] == "resolved"
    assert ticket["csat"] == 5
    assert ticket["first_response_at"] is not None

    upsell = gw.get(journey.owner, f"/api/sales/opportunities/{journey.upsell_opportunity_id}")
    assert upsell["origin"] == "upsell"
    assert upsell["owner"] == journey.owner_id

    def analytics_caught_up() -> dict[str, Any] | None:
        summary = gw.get("ana", "/api/analytics/summary")
        stages = summary["channels"].get(channel)
        if stages is None or stages["onboarded"] < 1:
            return None
        handoffs = summary["handoffs"]
        if any(handoffs.get(h, {}).get("transport", {}).get("count", 0) < 1 for h in HANDOFFS_WITH_TRAFFIC):
            return None
        return summary

    summary = until(analytics_caught_up, timeout=60, what="analytics to see the journey")
    assert summary["channels"][channel] == {
        "captured": 1,
        "qualified": 1,
        "accepted": 1,
        "won": 1,
        "onboarded": 1,
    }
    for name in HANDOFFS_WITH_TRAFFIC:
        transport = summary["handoffs"][name]["transport"]
        assert 0 < transport["p50"] <= transport["p95"] <= transport["p99"], name
    for name in ("lead-qualified", "deal-won"):
        business = summary["handoffs"][name]["business"]
        assert business is not None, name
        assert business["count"] >= 1
        assert business["p50"] > 0


def test_gateway_refuses_without_token_and_by_role(gw: Gateway) -> None:
    assert gw.http.get("/api/leads/leads").status_code == 401
    r = gw.http.put(
        "/api/leads/scoring-rules", json={}, headers={"Authorization": f"Bearer {gw.tokens['rita']}"}
    )
    assert r.status_code == 403
    bad = gw.http.post(
        "/api/leads/leads",
        json={"name": "x", "email": "not-an-email"},
        headers={"Authorization": f"Bearer {gw.tokens['maria']}"},
    )
    assert bad.status_code == 422
    fields = {f["field"] for f in bad.json()["fields"]}
    assert "body.email" in fields
