"""Customer success pages against a fake gateway: health on the account list, renewals, check-ins."""

from __future__ import annotations

import re

import httpx
import pytest
from console.api.forms import checkin_body, renewal_body


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([0-9a-f]+)"', html)
    assert found, "no CSRF token in the page"
    return found.group(1)


async def _carl(console: httpx.AsyncClient) -> None:
    page = await console.get("/login")
    r = await console.post(
        "/login", data={"csrf_token": csrf_of(page.text), "username": "carl", "password": "carl-pass"}
    )
    assert r.status_code == 303


async def test_the_account_list_shows_health_renewal_date_and_the_at_risk_flag(console) -> None:
    await _carl(console)
    r = await console.get("/accounts")
    assert r.status_code == 200
    rows = {row.split("</a>")[0].rsplit(">", 1)[1]: row for row in r.text.split("<tr>")[2:]}
    assert "81" in rows["Globex"]
    assert "healthy" in rows["Globex"]
    assert "at risk</span>" not in rows["Globex"]
    assert "34" in rows["Initech"]
    assert 'class="flag" title="4 urgent tickets in 30 days">at risk' in rows["Initech"]
    assert "2026-12-20" in rows["Globex"]
    assert "2026-11-30" in rows["Initech"]
    assert 'href="/renewals"' in r.text
    assert 'href="/checkins"' in r.text


async def test_renewals_due_list_overdue_first_and_record_an_outcome(console, fake_gateway) -> None:
    await _carl(console)
    page = await console.get("/renewals")
    assert "At risk: low health, open flags" in page.text, "a renewal at risk says why, weeks before"
    assert page.status_code == 200
    assert page.text.index("Initech") < page.text.index("Globex")  # overdue by 5 days comes first
    assert "overdue by 5 days" in page.text
    r = await console.post(
        "/renewals/acc-1",
        data={
            "csrf_token": csrf_of(page.text),
            "outcome": "renewed",
            "new_value": "13,500",
            "new_term_months": "12",
        },
    )
    assert r.status_code == 303
    assert r.headers["location"] == "/renewals?ok=renewal"
    assert fake_gateway.success.renewals[0] == {
        "account_id": "acc-1",
        "due_date": "2026-12-20T00:00:00Z",
        "new_term": None,
        "outcome": "renewed",
        "churn_reason": None,
        "notes": None,
        "new_value": "13500",
        "new_term_months": 12,
    }
    after = await console.get(r.headers["location"])
    assert "Renewal outcome recorded." in after.text
    assert 'href="/accounts/acc-1"' not in after.text  # no longer due
    account = await console.get("/accounts/acc-1")
    assert "renewed" in account.text


async def test_a_churn_needs_its_reason_and_an_api_refusal_is_shown_next_to_the_field(
    console, fake_gateway
) -> None:
    await _carl(console)
    page = await console.get("/renewals")
    token = csrf_of(page.text)
    missing = await console.post("/renewals/acc-2", data={"csrf_token": token, "outcome": "churned"})
    assert missing.status_code == 422
    assert 'id="err-acc-2-churn_reason"' in missing.text
    assert "Choose why the customer churned." in missing.text
    refused = await console.post(
        "/renewals/acc-2",
        data={
            "csrf_token": token,
            "outcome": "churned",
            "churn_reason": "price",
            "new_value": "10",
            "notes": "x",
        },
    )
    assert refused.status_code == 422
    assert 'id="err-acc-2-new_value"' in refused.text
    assert "a churned renewal has no new term" in refused.text
    assert 'value="x"' in refused.text  # what was typed stays
    assert fake_gateway.success.renewals == []


async def test_the_renewal_and_checkin_forms_refuse_a_post_without_the_csrf_token(
    console, fake_gateway
) -> None:
    await _carl(console)
    for path, data in (
        ("/renewals/acc-1", {"outcome": "renewed"}),
        ("/checkins/acc-1", {"held_at": "2026-12-04", "attendees": "Ann", "sentiment": "positive"}),
    ):
        r = await console.post(path, data=data)
        assert r.status_code == 403
        assert "Form refused" in r.text
    assert fake_gateway.success.renewals == []
    assert fake_gateway.success.checkins == []


async def test_log_a_checkin_from_the_due_list_and_see_it_on_the_account(console, fake_gateway) -> None:
    await _carl(console)
    page = await console.get("/checkins")
    assert page.text.index("Initech") < page.text.index("Globex")
    assert "overdue by 10 days" in page.text
    r = await console.post(
        "/checkins/acc-2",
        data={
            "csrf_token": csrf_of(page.text),
            "held_at": "2026-12-04",
            "attendees": "Ann Lee, Bo Chen",
            "sentiment": "negative",
            "notes": "wants a discount",
        },
    )
    assert r.status_code == 303
    assert r.headers["location"] == "/checkins?ok=checkin"
    assert fake_gateway.success.checkins == [
        {
            "account_id": "acc-2",
            "held_at": "2026-12-04T00:00:00Z",
            "attendees": ["Ann Lee", "Bo Chen"],
            "sentiment": "negative",
            "notes": "wants a discount",
        }
    ]
    account = await console.get("/accounts/acc-2")
    assert "negative — Ann Lee, Bo Chen: wants a discount" in account.text


async def test_the_account_page_shows_the_health_score_its_reasons_and_history(console) -> None:
    await _carl(console)
    r = await console.get("/accounts/acc-2")
    assert r.status_code == 200
    health = r.text.split('id="health"')[1].split("</section>")[0]
    assert '<strong class="score">34</strong> at risk' in health
    assert 'tickets</td><td class="num">-25.0</td><td>4 urgent tickets in 30 days' in health
    assert "History (newest first)" in health
    assert "2026-12-01" in health


async def test_an_unknown_account_is_a_404_page_in_words_not_a_500(console) -> None:
    await _carl(console)
    r = await console.post(
        "/renewals/nope",
        data={"csrf_token": csrf_of((await console.get("/renewals")).text), "outcome": "renewed"},
    )
    assert r.status_code == 404
    assert "no account nope" in r.text


@pytest.mark.parametrize(
    ("form", "errors"),
    [
        ({"outcome": "renewed"}, {}),
        ({"outcome": "maybe"}, {"outcome": "Choose renewed, downgraded or churned."}),
        ({"outcome": "churned", "churn_reason": "vibes"}, {"churn_reason": "'vibes' is not a churn reason."}),
        (
            {"outcome": "downgraded", "new_term_months": "6.5"},
            {"new_term_months": "'6.5' is not a whole number of months."},
        ),
    ],
)
def test_renewal_form_parsing(form: dict[str, str], errors: dict[str, str]) -> None:
    found: dict[str, str] = {}
    renewal_body(form, found)
    assert found == errors


def test_checkin_form_parsing_refuses_a_bad_date_no_attendee_and_no_sentiment() -> None:
    errors: dict[str, str] = {}
    checkin_body({"held_at": "4 Dec", "attendees": " , "}, errors)
    assert errors == {
        "held_at": "'4 Dec' is not a date (YYYY-MM-DD).",
        "attendees": "Name at least one attendee.",
        "sentiment": "Choose positive, neutral or negative.",
    }


async def test_the_account_page_reads_concurrently_and_refreshes_a_near_expiry_token_once(
    console, fake_gateway
) -> None:
    """The account page's six reads run together: a token about to expire is refreshed by one of
    them, the others wait for it (refresh tokens are single-use: a second refresh would end the
    session)."""
    fake_gateway.access_ttl = 5  # inside the 30 s refresh margin
    await _carl(console)
    fake_gateway.access_ttl = 900  # the refreshed token is good for a while
    fake_gateway.calls.clear()
    r = await console.get("/accounts/acc-2")
    assert r.status_code == 200, r.text
    assert [c for c in fake_gateway.calls if c[1] == "/auth/refresh"] == [
        ("POST", "/auth/refresh", {"refresh_token": "r-carl-0"})
    ]
    reads = [c[1] for c in fake_gateway.calls if c[1].startswith("/api/")]
    assert len(reads) == 6
