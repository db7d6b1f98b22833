"""Issue 7's walk through customer success, through the gateway only, every service and the faust
worker running as separate processes on the real broker and mongod:

won deal with a reviewed commitment -> onboarding -> check-in -> NPS detractor via the customer's
link -> action item to sales -> done -> health and churn warning update -> (after the win, a
flagged commitment acknowledged and resolved by sales, shown on the account) -> renewal recorded
-> the retention KPI moves.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from crm_platform.devinfra.journey import (
    Gateway,
    accept_and_win,
    capture_and_qualify,
    inbox_owner,
    onboarded_account,
    until,
)

pytestmark = pytest.mark.e2e

TIMEOUT = 60.0


def current_month(kpis: dict[str, Any]) -> dict[str, Any]:
    return dict(kpis["periods"][0]["teams"]["all"])


def test_customer_success_walk_from_the_win_to_the_renewal_moves_the_kpis(gw: Gateway) -> None:
    channel = f"cs-walk-{uuid.uuid4().hex[:6]}"
    lead_id = capture_and_qualify(gw, channel, "cs-walk", "Mary Jackson")
    owner = gw.username_of(inbox_owner(gw, lead_id, TIMEOUT))
    opp = accept_and_win(gw, owner, lead_id, TIMEOUT, progress=lambda _: None)  # Cora approved both promises
    won = gw.get(owner, f"/api/sales/opportunities/{opp}")
    assert won["commitment_review"]["status"] == "approved"

    account = onboarded_account(gw, opp, TIMEOUT)
    account_id = account["account_id"]
    before = gw.get("ana", "/api/analytics/kpis")
    renewals_before = current_month(before)["renewals"]

    # Onboarding: the CSM's first checklist step (the business latency of deal-won ends here).
    first_item = account["onboarding"]["checklist"][0]["key"]
    gw.call("cora", "POST", f"/api/service-desk/accounts/{account_id}/checklist/{first_item}/complete")

    # A check-in, then the NPS survey the customer answers through the link, as a detractor.
    held = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    checkin = {
        "held_at": held,
        "attendees": ["Mary Jackson", "Cora"],
        "sentiment": "neutral",
        "notes": "kickoff",
    }
    gw.call("cora", "POST", f"/api/service-desk/accounts/{account_id}/checkins", checkin)
    healthy = gw.get("cora", f"/api/service-desk/accounts/{account_id}/health")["current"]
    sent = gw.call("cora", "POST", f"/api/service-desk/accounts/{account_id}/nps-survey")
    token = str(sent["link"]).rsplit("/", 1)[1]
    comment = "The migration is late and nobody calls back"
    gw.public("POST", f"/public/service-desk/surveys/{token}", {"score": 3, "comment": comment})

    # Health falls and the churn warning is raised, with the detractor NPS as its reason.
    def warned() -> dict[str, Any] | None:
        items = gw.get("cora", "/api/service-desk/churn-warnings")["items"]
        return next((w for w in items if w["account_id"] == account_id), None)

    warning = until(warned, timeout=TIMEOUT, what="the churn warning for the detractor")
    assert "detractor_nps" in warning["signals"]
    scored = gw.get("cora", f"/api/service-desk/accounts/{account_id}/health")["current"]
    assert scored["score"] < healthy["score"]
    assert scored["at_risk"] is True

    # The comment becomes an action item for sales, which sales accepts and completes.
    due = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    raised = gw.call(
        "cora",
        "POST",
        "/api/service-desk/action-items",
        {
            "department": "sales",
            "title": "Call the customer about the migration delay",
            "due_at": due,
            "account_id": account_id,
            "source": {"kind": "survey", "record_id": sent["survey_id"], "excerpt": comment},
        },
    )
    item_id = raised["item_id"]
    until(
        lambda: gw.call(owner, "GET", f"/api/sales/action-queue/{item_id}", expect=(200, 404)).get("item_id"),
        timeout=TIMEOUT,
        what="the action item in sales' queue",
    )
    gw.call(owner, "POST", f"/api/sales/action-queue/{item_id}/accept")
    gw.call(
        owner,
        "POST",
        f"/api/sales/action-queue/{item_id}/complete",
        {"note": "Called; migration plan agreed"},
    )

    def done_on_the_record() -> dict[str, Any] | None:
        items = gw.get("cora", f"/api/service-desk/accounts/{account_id}/action-items")["items"]
        return next((i for i in items if i["item_id"] == item_id and i["status"] == "done"), None)

    until(done_on_the_record, timeout=TIMEOUT, what="the outcome back on the customer's record")

    # After the win: customer success flags a promise; sales acknowledges and resolves it.
    commitment_id = account["commitments"][0]["commitment_id"]
    flagged = gw.call(
        "cora",
        "POST",
        f"/api/service-desk/accounts/{account_id}/commitments/{commitment_id}/flag",
        {"reason": "Migration within 30 days is not possible with their data volume"},
    )
    flag_id = flagged["flag_id"]
    until(
        lambda: any(
            f["flag_id"] == flag_id
            for f in gw.get(owner, f"/api/sales/opportunities/{opp}")["commitment_flags"]
        ),
        timeout=TIMEOUT,
        what="the flag on the won deal in sales",
    )
    flags = f"/api/sales/opportunities/{opp}/commitment-flags/{flag_id}"
    gw.call(owner, "POST", f"{flags}/acknowledge")
    blank = gw.call(owner, "POST", f"{flags}/resolve", {"resolution": "  "}, expect=(422,))
    assert "resolution" in str(blank)
    resolution = "Migration in two phases over 60 days, agreed with the customer's CFO"
    gw.call(owner, "POST", f"{flags}/resolve", {"resolution": resolution})

    def resolved_on_the_account() -> dict[str, Any] | None:
        commitments = gw.get("cora", f"/api/service-desk/accounts/{account_id}")["commitments"]
        c = next(c for c in commitments if c["commitment_id"] == commitment_id)
        return c if c["sales_answer"] == "resolved" else None

    shown = until(resolved_on_the_account, timeout=TIMEOUT, what="sales' resolution on the account")
    assert shown["sales_resolution"] == resolution
    assert shown["sales_answered_by"] == gw.user_ids[owner]

    # The renewal is recorded: renewed with a larger contract.
    gw.call(
        "cora",
        "POST",
        f"/api/service-desk/accounts/{account_id}/renewals",
        {"outcome": "renewed", "new_value": 45000, "new_term_months": 12},
    )

    # Analytics: the retention KPI moves, and the walk's figures are there.
    def kpis_moved() -> dict[str, Any] | None:
        kpis = gw.get("ana", "/api/analytics/kpis")
        month = current_month(kpis)
        return kpis if month["renewals"]["renewed"] > renewals_before["renewed"] else None

    kpis = until(kpis_moved, timeout=TIMEOUT, what="analytics' renewal KPIs to count the renewal")
    month = current_month(kpis)
    assert month["renewals"]["recorded"] == renewals_before["recorded"] + 1
    assert month["renewals"]["renewal_rate"] is not None
    assert month["renewals"]["revenue_retention"]["EUR"]["net_retention"] is not None
    assert month["nps"]["detractors"] >= 1
    assert month["checkins"]["covered_accounts"] >= 1
    assert month["action_items"]["sales"]["closed"] >= 1
    latency = kpis["business_latency"]
    assert latency["action-item-to-sales"]["windows"]["last_hour"]["count"] >= 1
    assert latency["commitment-flagged"]["windows"]["last_hour"]["count"] >= 1
    assert latency["deal-won"]["windows"]["last_hour"]["count"] >= 1
    assert kpis["marketing"]["channels"][channel]["accepted"] == 1
    assert gw.user_ids[owner] not in str(kpis)  # every KPI, no personal data

    # Customer success reads its own KPIs; marketing its channel; neither reads everything.
    service = gw.get("cora", "/api/analytics/kpis/service")
    assert current_month(service)["renewals"]["renewed"] == month["renewals"]["renewed"]
    assert gw.get("maria", "/api/analytics/kpis/marketing")["marketing"]["channels"][channel]["captured"] == 1
    for user in ("cora", "maria"):
        gw.call(user, "GET", "/api/analytics/kpis", expect=(403,))


def test_marketings_edit_of_a_rejected_lead_ends_the_lead_verdict_business_latency(gw: Gateway) -> None:
    """lead-verdict: sales rejects a lead -> it waits for marketing (by its age) -> marketing's
    edit (``lead.edited``, field names only) is its first human step and ends the wait."""

    def verdict_latency() -> dict[str, Any]:
        return dict(gw.get("maria", "/api/analytics/kpis/marketing")["business_latency"]["lead-verdict"])

    waiting_before = verdict_latency()["pending"]
    lead_id = capture_and_qualify(gw, f"verdict-{uuid.uuid4().hex[:6]}", "cs-walk", "Dorothy Vaughan")
    owner = gw.username_of(inbox_owner(gw, lead_id, TIMEOUT))
    gw.call(
        owner,
        "POST",
        f"/api/sales/inbox/{lead_id}/reject",
        {"reason_code": "bad_data", "note": "Wrong company"},
    )
    waiting = until(
        lambda: (v := verdict_latency())["pending"] > waiting_before and v,
        timeout=TIMEOUT,
        what="the rejection waiting for marketing in analytics",
    )
    assert waiting["windows"]["last_hour"]["count"] >= 1, "a waiting handoff counts by its age"

    bad = gw.call("maria", "PATCH", f"/api/leads/leads/{lead_id}", {"name": ""}, expect=(422,))
    assert "name" in str(bad)
    gw.call("maria", "PATCH", f"/api/leads/leads/{lead_id}", {"company": "Vaughan Computing Ltd"})
    acted = until(
        lambda: (v := verdict_latency())["pending"] == waiting["pending"] - 1 and v,
        timeout=TIMEOUT,
        what="marketing's edit to end the rejection's wait",
    )
    assert acted["windows"]["last_hour"]["count"] >= 1, "the edit's latency is in the window"
    assert "Vaughan Computing" not in str(gw.get("ana", "/api/analytics/kpis")), "no value of the lead"
