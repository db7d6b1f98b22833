"""Scoring rules by API: read, change (versioned, with who), validation, roles, effect.

Its own module (so its own database): changing the rules here must not move the
scores other modules assert on.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeAlias

import pytest
from crm_platform.testing import auth_headers
from leads import store

pytestmark = pytest.mark.integration
Leads: TypeAlias = Any  # conftest.Leads (conftest is not importable in importlib mode)

MARKETING = auth_headers(["marketing"], "mia")
ADMIN = auth_headers(["admin"], "root")
SALES_REP = auth_headers(["sales_rep"], "sam")
ANALYST = auth_headers(["analyst"], "ann")

DEFAULTS: dict[str, dict[str, Any]] = {
    "page_view": {"weight": 5.0, "cap": 10},
    "email_open": {"weight": 3.0, "cap": 10},
    "form_submit": {"weight": 20.0, "cap": None},
    "trial_signup": {"weight": 40.0, "cap": None},
}


def rules_body(**changes: Any) -> dict[str, Any]:
    rules = {b: dict(r) for b, r in DEFAULTS.items()}
    body: dict[str, Any] = {"rules": rules, "threshold": 60}
    for key, value in changes.items():
        if key in rules:
            rules[key] = value
        else:
            body[key] = value
    return body


async def test_default_rules_are_version_one(leads: Leads) -> None:
    r = await leads.client.get("/scoring-rules", headers=SALES_REP)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["version"] == 1
    assert body["rules"] == DEFAULTS
    assert body["threshold"] == 60
    assert body["changed_by"]["username"] == "system"


async def test_change_is_versioned_with_who_and_applies_to_the_next_behaviour(leads: Leads) -> None:
    lead = (await leads.capture())["lead"]
    before = await leads.behave(lead["id"], "form_submit")
    assert before["lead"]["score"] == 20
    current = (await leads.client.get("/scoring-rules", headers=MARKETING)).json()["version"]

    body = rules_body(form_submit={"weight": 35, "cap": 2}, threshold=50, note="forms convert")
    r = await leads.client.put("/scoring-rules", json=body, headers=MARKETING)
    assert r.status_code == 200, r.text
    new = r.json()
    assert new["version"] == current + 1
    assert new["changed_by"] == {"user_id": "user-mia", "username": "mia"}
    assert new["changed_at"] is not None
    assert new["note"] == "forms convert"
    assert new["rules"]["form_submit"] == {"weight": 35.0, "cap": 2}
    assert (await leads.client.get("/scoring-rules", headers=ANALYST)).json() == new

    # The stored score changes on the lead's next behaviour, with the new rules.
    assert (await leads.lead(lead["id"]))["score"] == 20
    out = await leads.behave(lead["id"], "form_submit", "form_submit")
    assert out["lead"]["score"] == 70  # 3 forms, capped at 2 x 35
    assert out["lead"]["rules_version"] == new["version"]
    assert out["lead"]["threshold"] == 50
    assert out["lead"]["status"] == "qualified"

    again = await leads.client.put("/scoring-rules", json=rules_body(), headers=ADMIN)
    assert again.status_code == 200
    assert again.json()["version"] == new["version"] + 1
    history = (await leads.client.get("/scoring-rules/history", headers=MARKETING)).json()["items"]
    versions = [h["version"] for h in history]
    assert versions == sorted(versions, reverse=True)
    assert versions[0] == again.json()["version"]
    assert versions[-1] == 1
    assert history[0]["changed_by"]["username"] == "root"
    assert history[1]["changed_by"]["username"] == "mia"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (rules_body(page_view={"weight": -1}), "body.rules.page_view.weight"),
        (rules_body(email_open={"weight": 3, "cap": 0}), "body.rules.email_open.cap"),
        (rules_body(threshold=0), "body.threshold"),
        (rules_body(threshold=-10), "body.threshold"),
        (
            {"rules": {k: v for k, v in DEFAULTS.items() if k != "trial_signup"}, "threshold": 60},
            "body.rules.trial_signup",
        ),
        (rules_body(page_view={"weight": "lots"}), "body.rules.page_view.weight"),
        ({"rules": {**DEFAULTS, "tweet": {"weight": 1}}, "threshold": 60}, "body.rules.tweet"),
        ({"rules": DEFAULTS}, "body.threshold"),
    ],
)
async def test_invalid_rules_are_a_422_naming_the_field(
    leads: Leads, body: dict[str, Any], field: str
) -> None:
    before = (await leads.client.get("/scoring-rules", headers=MARKETING)).json()
    r = await leads.client.put("/scoring-rules", json=body, headers=MARKETING)
    assert r.status_code == 422, r.text
    assert field in {f["field"] for f in r.json()["fields"]}, r.json()
    assert (await leads.client.get("/scoring-rules", headers=MARKETING)).json() == before


async def test_zero_weight_is_accepted(leads: Leads) -> None:
    r = await leads.client.put("/scoring-rules", json=rules_body(email_open={"weight": 0}), headers=MARKETING)
    assert r.status_code == 200, r.text
    assert r.json()["rules"]["email_open"] == {"weight": 0.0, "cap": None}


async def test_stale_expected_version_is_a_409(leads: Leads) -> None:
    current = (await leads.client.get("/scoring-rules", headers=MARKETING)).json()["version"]
    stale = await leads.client.put(
        "/scoring-rules", json=rules_body(expected_version=current - 1 or 99), headers=MARKETING
    )
    assert stale.status_code == 409, stale.text
    assert stale.json()["details"]["current_version"] == current
    ok = await leads.client.put(
        "/scoring-rules", json=rules_body(expected_version=current), headers=MARKETING
    )
    assert ok.status_code == 200
    assert ok.json()["version"] == current + 1


@pytest.mark.parametrize("role", ["sales_rep", "sales_manager", "analyst", "service_rep"])
async def test_only_marketing_and_admin_change_rules(leads: Leads, role: str) -> None:
    before = (await leads.client.get("/scoring-rules", headers=MARKETING)).json()
    r = await leads.client.put(
        "/scoring-rules", json=rules_body(threshold=1), headers=auth_headers([role], "someone")
    )
    assert r.status_code == 403, r.text
    assert r.json()["error"] == "forbidden"
    assert (await leads.client.get("/scoring-rules", headers=MARKETING)).json() == before


async def test_rules_need_a_token_and_a_reading_role(leads: Leads) -> None:
    assert (await leads.client.get("/scoring-rules")).status_code == 401
    service_rep = auth_headers(["service_rep"], "sid")
    assert (await leads.client.get("/scoring-rules", headers=service_rep)).status_code == 403


async def test_a_change_applies_here_at_once_though_an_older_transaction_read_the_rules_after_it(
    leads: Leads,
) -> None:
    """This replica scores with its own change at once (crm_platform.cache), even when a
    transaction that began before the change committed reads the rules after it: that one
    scores with its snapshot's rules, and must not keep them in the cache."""
    uow = leads.app.state.uow
    began, changed = asyncio.Event(), asyncio.Event()

    async def older(unit: Any) -> Any:
        await unit.tx.db[store.SCORING_RULES].find_one({}, session=unit.tx.session)  # snapshot fixed
        began.set()
        await changed.wait()
        return await unit.rules.current()

    reading = asyncio.create_task(uow.run(older))
    await began.wait()
    r = await leads.client.put(
        "/scoring-rules", json=rules_body(form_submit={"weight": 45, "cap": None}), headers=MARKETING
    )
    assert r.status_code == 200, r.text
    new = r.json()["version"]
    changed.set()
    assert (await reading).version == new - 1, "the older transaction reads its snapshot"
    lead = (await leads.capture())["lead"]
    out = await leads.behave(lead["id"], "form_submit")
    assert (out["lead"]["rules_version"], out["lead"]["score"]) == (new, 45)
    assert (await leads.client.put("/scoring-rules", json=rules_body(), headers=ADMIN)).status_code == 200
