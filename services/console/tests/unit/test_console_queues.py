"""Action items, churn warnings, health rules and commitment reviews against a fake gateway."""

from __future__ import annotations

import re

import httpx
from console.api.action_items import queue_for, raise_body, step_body
from console.api.retention import rules_body, verdict_body


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([0-9a-f]+)"', html)
    assert found, "no CSRF token in the page"
    return found.group(1)


async def login(console: httpx.AsyncClient, username: str) -> str:
    page = await console.get("/login")
    form = {"csrf_token": csrf_of(page.text), "username": username, "password": f"{username}-pass"}
    r = await console.post("/login", data=form)
    assert r.status_code == 303, r.text
    return csrf_of((await console.get("/me")).text)


def test_each_role_works_its_own_departments_queue_and_an_admin_picks_one() -> None:
    assert queue_for(frozenset({"sales_rep"}), None).department == "sales"  # type: ignore[union-attr]
    assert queue_for(frozenset({"sales_rep"}), "marketing").department == "sales"  # type: ignore[union-attr]
    assert queue_for(frozenset({"marketing_manager"}), None).department == "marketing"  # type: ignore[union-attr]
    assert queue_for(frozenset({"service_lead"}), None).department == "customer-success"  # type: ignore[union-attr]
    assert queue_for(frozenset({"admin"}), "marketing").department == "marketing"  # type: ignore[union-attr]
    assert queue_for(frozenset({"analyst"}), None) is None


def test_a_decline_needs_its_reason_and_an_assignment_its_assignee() -> None:
    errors: dict[str, str] = {}
    assert step_body("decline", {"reason": "  "}, errors) == {"reason": ""}
    assert step_body("assign", {}, errors) == {"assignee": ""}
    assert errors == {"reason": "Say why your department declines it.", "assignee": "Choose who takes it."}
    assert step_body("complete", {"note": "shipped"}, {}) == {"note": "shipped"}
    assert step_body("erase", {}, {}) is None


def test_raising_an_item_names_its_source_and_due_day() -> None:
    errors: dict[str, str] = {}
    body = raise_body(
        "acc-1",
        {
            "department": "sales",
            "title": "Offer SSO",
            "due_at": "2027-01-15",
            "source_id": "t-1",
            "excerpt": "SSO!",
        },
        errors,
    )
    assert errors == {}
    assert body["due_at"] == "2027-01-15T17:00:00Z"
    assert body["source"] == {"kind": "ticket", "record_id": "t-1", "excerpt": "SSO!"}
    raise_body("acc-1", {"department": "finance", "due_at": "soon"}, errors)
    assert set(errors) == {"department", "title", "due_at"}


def test_health_rules_keep_each_values_kind() -> None:
    errors: dict[str, str] = {}
    rules = rules_body({"base": 60.0, "window_days": 90}, {"base": "62.5", "window_days": "30"}, errors)
    assert rules == {"base": 62.5, "window_days": 30}
    rules_body({"base": 60.0, "window_days": 90}, {"base": "", "window_days": "7.5"}, errors)
    assert errors == {"base": "Enter a number.", "window_days": "Enter a whole number."}


def test_a_verdict_decides_every_commitment_and_a_flag_says_why() -> None:
    errors: dict[str, str] = {}
    body = verdict_body(
        ["c1", "c2", "c3"],
        {"decision.c1": ["approved"], "decision.c2": ["flagged"], "reason.c2": [""]},
        errors,
    )
    assert errors == {
        "reason.c2": "Say why sales should not promise this.",
        "decision.c3": "Approve it or flag it.",
    }
    assert body["decisions"][0] == {"commitment_id": "c1", "decision": "approved", "reason": None}


async def test_a_rep_accepts_and_completes_an_item_of_sales_queue(console, fake_gateway) -> None:
    token = await login(console, "rita")
    page = await console.get("/action-items")
    assert page.status_code == 200
    assert "Sales&#39;s action items" in page.text or "Sales's action items" in page.text
    assert "Offer SSO in the next quote" in page.text
    assert "SSO keeps failing" in page.text  # what the customer said
    assert "/assign" not in page.text  # a rep does not assign
    r = await console.post("/action-items/sales/si-1/accept", data={"csrf_token": token, "view": "open"})
    assert r.status_code == 303
    assert r.headers["location"] == "/action-items?department=sales&view=open&ok=item_accept"
    r = await console.post("/action-items/sales/si-1/complete", data={"csrf_token": token, "note": "quoted"})
    assert r.status_code == 303
    item = fake_gateway.queues.items["/api/sales/action-queue"]["si-1"]
    assert item["status"] == "done"
    assert item["history"][-1]["note"] == "quoted"
    again = await console.post("/action-items/sales/si-1/complete", data={"csrf_token": token})
    assert again.status_code == 409
    assert 'id="err-si-1-form" role="alert">the item is already done' in again.text


async def test_a_decline_without_a_reason_is_refused_next_to_the_field_without_calling_the_api(
    console, fake_gateway
) -> None:
    token = await login(console, "rita")
    before = len(fake_gateway.calls)
    r = await console.post("/action-items/sales/si-1/decline", data={"csrf_token": token, "reason": " "})
    assert r.status_code == 422
    assert 'id="err-si-1-reason" role="alert">Say why your department declines it.' in r.text
    assert not [c for c in fake_gateway.calls[before:] if c[1].endswith("/decline")]


async def test_the_sales_manager_assigns_to_a_rep_of_the_roster(console, fake_gateway) -> None:
    token = await login(console, "sam")
    page = await console.get("/action-items")
    assert '<option value="user-rita" >Rita</option>' in page.text or 'value="user-rita"' in page.text
    r = await console.post(
        "/action-items/sales/si-1/assign", data={"csrf_token": token, "assignee": "user-rita"}
    )
    assert r.status_code == 303
    assert fake_gateway.queues.items["/api/sales/action-queue"]["si-1"]["assignee"] == "user-rita"


async def test_each_department_sees_its_own_queue_and_an_analyst_none(console) -> None:
    await login(console, "maria")
    assert "Fix the pricing page" in (await console.get("/action-items")).text
    await login(console, "carl")
    assert "Call the sponsor" in (await console.get("/action-items")).text
    await login(console, "ana")
    assert (await console.get("/action-items")).status_code == 403


async def test_a_csm_raises_an_item_from_the_account_and_a_refusal_shows_next_to_its_field(
    console, fake_gateway
) -> None:
    token = await login(console, "carl")
    form = {"csrf_token": token, "department": "sales", "title": "Offer SSO", "due_at": "2027-01-15"}
    r = await console.post("/accounts/acc-1/action-items", data=form)
    assert r.status_code == 303
    assert r.headers["location"] == "/accounts/acc-1?ok=raised"
    page = await console.get(r.headers["location"])
    assert "Offer SSO</strong> — sales" in page.text
    refused = await console.post("/accounts/acc-1/action-items", data={**form, "title": "refuse me"})
    assert refused.status_code == 422
    assert 'id="err-raise-due_at" role="alert">the due date must be in the future' in refused.text
    assert 'value="refuse me"' in refused.text  # what was typed is kept


async def test_churn_warnings_show_why_and_how_well_the_warning_predicts(console) -> None:
    await login(console, "sven")
    r = await console.get("/churn-warnings")
    assert r.status_code == 200
    assert 'href="/accounts/acc-2">Initech</a>' in r.text
    assert "4 urgent tickets in 30 days" in r.text
    assert "<dt>Precision</dt><dd>75%" in r.text


async def test_a_csm_saves_health_rules_and_a_refused_value_is_shown_next_to_it(
    console, fake_gateway
) -> None:
    token = await login(console, "carl")
    page = await console.get("/health-rules")
    assert "version 3" in page.text
    assert 'value="90"' in page.text
    r = await console.post("/health-rules", data={"csrf_token": token, "base": "62.5", "window_days": "60"})
    assert r.status_code == 303
    assert fake_gateway.success.rules == {"version": 4, "rules": {"base": 62.5, "window_days": 60}}
    r = await console.post("/health-rules", data={"csrf_token": token, "base": "120", "window_days": "60"})
    assert r.status_code == 422
    assert 'id="err-base" role="alert">at most 100' in r.text


async def test_a_service_rep_reads_the_health_rules_but_gets_no_save_button(console) -> None:
    await login(console, "sven")
    page = await console.get("/health-rules")
    assert page.status_code == 200
    assert "Save as version" not in page.text
    assert "readonly" in page.text


async def test_a_csm_flags_a_commitment_with_its_reason_and_the_verdict_goes_to_sales(
    console, fake_gateway
) -> None:
    token = await login(console, "carl")
    page = await console.get("/commitment-reviews")
    assert "Umbrella" in page.text
    assert "Custom SAP connector" in page.text
    form = {"csrf_token": token, "decision.c1": "approved", "decision.c2": "flagged"}
    r = await console.post("/commitment-reviews/rev-1", data=form)
    assert r.status_code == 422
    assert 'id="err-rev-1-reason-c2" role="alert">Say why sales should not promise this.' in r.text
    r = await console.post("/commitment-reviews/rev-1", data={**form, "reason.c2": "no SAP team"})
    assert r.status_code == 303
    assert fake_gateway.success.reviews["rev-1"]["decisions"][1] == {
        "commitment_id": "c2",
        "decision": "flagged",
        "reason": "no SAP team",
    }


async def test_a_service_rep_does_not_review_commitments(console) -> None:
    await login(console, "sven")
    r = await console.get("/commitment-reviews")
    assert r.status_code == 403
    assert 'href="/commitment-reviews"' not in r.text
