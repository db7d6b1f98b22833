"""POST /scoring-rules/preview: how many leads a draft of the rules would qualify, before saving.

Its own module (so its own database): the leads here are the only ones the preview reads.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import pytest
from crm_platform.testing import auth_headers
from leads import store

pytestmark = pytest.mark.integration
Leads: TypeAlias = Any  # conftest.Leads (conftest is not importable in importlib mode)

MARKETING = auth_headers(["marketing"], "mia")

# The defaults but page views score 4 up to 20 views and a trial signup 30; threshold 50.
DRAFT: dict[str, Any] = {
    "rules": {
        "page_view": {"weight": 4, "cap": 20},
        "email_open": {"weight": 3, "cap": 10},
        "form_submit": {"weight": 20, "cap": None},
        "trial_signup": {"weight": 30, "cap": None},
    },
    "threshold": 50,
}


async def _lead_in(leads: Leads, status: str, counts: dict[str, int]) -> None:
    lead = (await leads.capture())["lead"]
    await leads.runtime.store.db[store.LEADS].update_one(
        {"_id": lead["id"]},
        {"$set": {"status": status, "cycle_counts": counts, store.LIST_KEYS: [store.status_key(status)]}},
    )


async def test_a_draft_is_previewed_over_the_open_leads_and_nothing_is_stored(leads: Leads) -> None:
    await _lead_in(leads, "nurturing", {"page_view": 15})  # 50 with the defaults, 60 with the draft
    await _lead_in(leads, "recycled", {"trial_signup": 1, "page_view": 4})  # 60, then 46
    await _lead_in(leads, "qualified", {"trial_signup": 2})  # handed to sales already: not read
    await leads.capture()  # new, nothing seen yet
    r = await leads.client.post("/scoring-rules/preview", json=DRAFT, headers=MARKETING)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "current_version": 1,
        "leads": 3,
        "qualify_current": 1,
        "qualify_draft": 1,
        "newly": 1,
        "no_longer": 1,
        "truncated": False,
    }
    rules = (await leads.client.get("/scoring-rules", headers=MARKETING)).json()
    assert rules["version"] == 1
    assert rules["rules"]["page_view"] == {"weight": 5.0, "cap": 10}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"threshold": 0}, "threshold"),
        ({"rules": {**DRAFT["rules"], "page_view": {"weight": 4, "cap": 0}}}, "page_view"),
        ({"rules": {**DRAFT["rules"], "email_open": {"weight": -1, "cap": None}}}, "email_open"),
    ],
)
async def test_a_bad_draft_is_a_422_naming_the_field(
    leads: Leads, change: dict[str, Any], field: str
) -> None:
    r = await leads.client.post("/scoring-rules/preview", json={**DRAFT, **change}, headers=MARKETING)
    assert r.status_code == 422, r.text
    assert field in r.text


@pytest.mark.parametrize("role", ["sales_rep", "analyst"])
async def test_only_marketing_and_admin_preview(leads: Leads, role: str) -> None:
    r = await leads.client.post("/scoring-rules/preview", json=DRAFT, headers=auth_headers([role], "x"))
    assert r.status_code == 403
