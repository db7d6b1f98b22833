"""Field-level rules (issue 9): analysts and executives see a lead's personal data pseudonymised
on every read route: list, search, get, history and the CSV export (crm_platform.pseudonym).

Executives hold no lead permission by default and analysts no export: the module grants them
those (as an administrator would, through the policy) to show that a route opened later is
covered too. Marketing, admins and an analyst who is also in marketing see real data.
"""

from __future__ import annotations

import csv
import io
from typing import Any, TypeAlias

import pytest
from crm_platform.field_rules import applies_to
from crm_platform.pseudonym import DEV_PSEUDONYM_KEY, pseudonym
from crm_platform.testing import auth_headers, grant_for_test

pytestmark = pytest.mark.integration
Leads: TypeAlias = Any  # conftest.Leads

READ = ("leads.leads.read", "leads.leads.export")
PSEUDONYMISED = {
    "analyst": ["analyst"],
    "executive": ["executive"],
    "analyst+executive": ["analyst", "executive"],
}
REAL = {"marketing": ["marketing"], "admin": ["admin"], "analyst+marketing": ["analyst", "marketing"]}


async def _grant(leads: Leads) -> None:
    await grant_for_test(leads.runtime, {"analyst": set(READ), "executive": set(READ)})


async def _reads(leads: Leads, roles: list[str], lead_id: str, email: str) -> dict[str, Any]:
    headers = auth_headers(roles, "reader")
    out: dict[str, Any] = {}
    for name, path, params in (
        ("list", "/leads", {"limit": 200}),
        ("search", "/leads", {"q": email}),
        ("get", f"/leads/{lead_id}", {}),
        ("history", f"/leads/{lead_id}/history", {}),
        ("export", "/leads/export", {"channel": "pseudo-test"}),
    ):
        r = await leads.client.get(path, params=params, headers=headers)
        if name == "search" and applies_to(roles):  # searching by a real e-mail: refused
            assert r.status_code == 403, (roles, name, r.text)
            out[name] = r.json()
            continue
        assert r.status_code == 200, (roles, name, r.text)
        out[name] = r.text if name == "export" else r.json()
    return out


def _created(history: dict[str, Any]) -> dict[str, Any]:
    """The values the lead was created with, from its history (the oldest entry)."""
    return {c["field"]: c["after"] for c in history["items"][-1]["changes"]}


def _listed(body: dict[str, Any], lead_id: str) -> dict[str, Any]:
    [item] = [i for i in body["items"] if i["id"] == lead_id]
    return item


async def test_analysts_and_executives_see_pseudonyms_on_every_read_route(leads: Leads) -> None:
    await _grant_once(leads)
    email = leads.unique_email("pseudo")
    lead = (await leads.capture(email=email, name="Grace  Hopper", source_channel="pseudo-test"))["lead"]
    # the tests run with the development key
    masked_email, masked_name = (
        pseudonym("email", email, DEV_PSEUDONYM_KEY),
        pseudonym("name", "grace hopper", DEV_PSEUDONYM_KEY),
    )
    for label, roles in PSEUDONYMISED.items():
        seen = await _reads(leads, roles, lead["id"], email)
        item = _listed(seen["list"], lead["id"])
        assert (item["email"], item["name"]) == (masked_email, masked_name), label
        assert item["company"] == "Engines"  # not personal: kept
        assert seen["search"]["details"]["field"] == "query.q", seen["search"]
        assert (seen["get"]["email"], seen["get"]["name"]) == (masked_email, masked_name), label
        created = _created(seen["history"])
        assert (created["email"], created["name"]) == (masked_email, masked_name), label
        rows = list(csv.DictReader(io.StringIO(seen["export"])))
        [row] = [r for r in rows if r["id"] == lead["id"]]
        assert (row["email"], row["name"], row["company"]) == (masked_email, masked_name, "Engines"), label
        for body in (str(seen["list"]), str(seen["get"]), str(seen["history"]), seen["export"]):
            assert email not in body
            assert "Grace" not in body


async def test_operational_roles_and_an_analyst_in_marketing_see_real_data(leads: Leads) -> None:
    await _grant_once(leads)
    email = leads.unique_email("real")
    lead = (await leads.capture(email=email, name="Grace Hopper", source_channel="pseudo-test"))["lead"]
    for label, roles in REAL.items():
        seen = await _reads(leads, roles, lead["id"], email)
        assert _listed(seen["list"], lead["id"])["email"] == email, label
        assert _listed(seen["search"], lead["id"])["name"] == "Grace Hopper", label
        assert seen["get"]["email"] == email, label
        assert _created(seen["history"])["email"] == email, label
        assert f"{lead['id']},{email},Grace Hopper" in seen["export"], label


async def _grant_once(leads: Leads) -> None:
    if "executive" not in (await leads.runtime.permissions.current()).roles_with(READ[0]):
        await _grant(leads)


async def test_pseudonymised_users_cannot_search_filter_or_sort_by_what_they_see_pseudonymised(
    leads: Leads,
) -> None:
    """A search matched against real values would tell an analyst that a person whose e-mail
    they know is there: ``q``, ``sort=name`` and a text custom field filter are refused (403
    naming the parameter) for them, on the list and everywhere else; business filters work."""
    await _grant_once(leads)
    fields = [
        {"key": "tier", "label": "Tier", "type": "choice", "choices": ["gold", "silver"]},
        {"key": "nickname", "label": "Nickname", "type": "text"},
    ]
    r = await leads.client.put(
        "/custom-fields/lead", json={"fields": fields}, headers=auth_headers(["admin"], "root")
    )
    assert r.status_code == 200, r.text
    email = leads.unique_email("known")
    await leads.capture(email=email, name="Ada Known", source_channel="pseudo-search")
    for roles in PSEUDONYMISED.values():
        headers = auth_headers(roles, "reader")
        for params, field in (
            ({"q": email}, "query.q"),
            ({"q": "Ada"}, "query.q"),
            ({"sort": "name"}, "query.sort"),
            ({"cf": "nickname=Ada"}, "query.cf"),
        ):
            r = await leads.client.get("/leads", params=params, headers=headers)
            assert r.status_code == 403, (roles, params, r.text)
            assert r.json()["details"]["field"] == field, r.text
            assert email not in r.text
        r = await leads.client.get(
            "/leads", params={"cf": "tier=gold", "channel": "pseudo-search"}, headers=headers
        )
        assert r.status_code == 200, "filters on business data still work"
    for roles in REAL.values():
        r = await leads.client.get("/leads", params={"q": email}, headers=auth_headers(roles, "reader"))
        assert r.status_code == 200, (roles, r.text)
        assert [x["email"] for x in r.json()["items"]] == [email], roles
