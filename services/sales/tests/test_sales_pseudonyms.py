"""Field-level rules (issue 9): analysts and executives see the people in sales' records
pseudonymised (crm_platform.field_rules) on the inbox, contacts and opportunities lists and
their CSV exports; sales managers, admins and an analyst who is also a sales manager see them.

Analysts and executives hold none of these lists by default: the module grants them (as an
administrator would, through the policy), which shows a route opened later is covered too.
"""

from __future__ import annotations

import csv
import io
import uuid
from typing import Any, TypeAlias

import pytest
from crm_platform.pseudonym import DEV_PSEUDONYM_KEY, pseudonym
from crm_platform.testing import grant_for_test

pytestmark = pytest.mark.integration
Sales: TypeAlias = Any  # conftest.Sales

GRANTS = ("sales.inbox.read", "sales.accounts.manage", "sales.opportunities.manage")
PSEUDONYMISED = (["analyst"], ["executive"])
REAL = (["sales_manager"], ["admin"], ["analyst", "sales_manager"])


def _email(value: str) -> str:
    return pseudonym("email", value, DEV_PSEUDONYM_KEY)  # the tests run with the development key


def _name(value: str) -> str:
    return pseudonym("name", value, DEV_PSEUDONYM_KEY)


async def _grant(sales: Sales) -> None:
    await grant_for_test(sales.runtime, {"analyst": set(GRANTS), "executive": set(GRANTS)})


async def _records(sales: Sales) -> dict[str, Any]:
    """An inbox item (a handoff), a direct contact and an opportunity, all about one new person each."""
    tag = uuid.uuid4().hex[:8]
    rep = sales.uid("rhea")
    await sales.activate(rep)
    item, _ = await sales.qualify(email=f"ada.{tag}@example.com")
    body = {
        "email": f"grace.{tag}@example.com",
        "name": "Grace Hopper",
        "phone": "+1 555 0100",
        "source": "referral",
    }
    r = await sales.client.post("/contacts", json=body, headers=sales.rep(rep))
    assert r.status_code == 201, r.text
    opportunity = await sales.opportunity_for(rep, email=f"alan.{tag}@example.com")
    return {"item": item, "contact": r.json(), "opportunity": opportunity, "tag": tag}


async def _get(sales: Sales, roles: list[str], path: str, **params: Any) -> Any:
    r = await sales.client.get(path, params=params, headers=sales.headers_of(roles))
    assert r.status_code == 200, (roles, path, r.text)
    return r.text if path.endswith("/export") else r.json()


def _find(items: list[dict[str, Any]], key: str, value: str) -> dict[str, Any]:
    [found] = [i for i in items if i[key] == value]
    return found


def _row(text: str, key: str, value: str) -> dict[str, str]:
    [found] = [r for r in csv.DictReader(io.StringIO(text)) if r[key] == value]
    return found


async def test_analysts_and_executives_see_sales_records_pseudonymised(sales: Sales) -> None:
    await _grant(sales)
    rec = await _records(sales)
    item, contact, opp, tag = rec["item"], rec["contact"], rec["opportunity"], rec["tag"]
    for roles in PSEUDONYMISED:
        listed = _find((await _get(sales, roles, "/inbox", limit=200))["items"], "lead_id", item["lead_id"])
        assert f"ada.{tag}" not in str(listed)
        assert "Ada Lovelace" not in str(listed)
        assert _email(f"ada.{tag}@example.com") in str(listed)
        row = _row(await _get(sales, roles, "/inbox/export"), "lead_id", item["lead_id"])
        assert (row["contact_name"], row["contact_email"]) == (
            _name("Ada Lovelace"),
            _email(f"ada.{tag}@example.com"),
        )

        c = _find((await _get(sales, roles, "/contacts", limit=200))["items"], "id", contact["id"])
        assert (c["email"], c["name"]) == (_email(f"grace.{tag}@example.com"), _name("grace hopper"))
        assert c["phone"] == pseudonym("phone", "15550100", DEV_PSEUDONYM_KEY)
        row = _row(await _get(sales, roles, "/contacts/export"), "id", contact["id"])
        assert (row["email"], row["name"]) == (c["email"], c["name"])

        o = _find((await _get(sales, roles, "/opportunities", limit=200))["items"], "id", opp["id"])
        assert [x["email"] for x in o["contacts"]] == [_email(f"alan.{tag}@example.com")]
        assert o["stage"] == opp["stage"]  # not personal: kept
        export = await _get(sales, roles, "/opportunities/export")
        assert f"alan.{tag}" not in export

        # one record, and its history: read (pseudonymised), never acted on
        one = await _get(sales, roles, f"/contacts/{contact['id']}")
        assert (one["email"], one["name"]) == (c["email"], c["name"])
        history = str(await _get(sales, roles, f"/contacts/{contact['id']}/history"))
        assert f"grace.{tag}" not in history
        assert c["email"] in history
        assert [
            x["email"] for x in (await _get(sales, roles, f"/opportunities/{opp['id']}"))["contacts"]
        ] == [_email(f"alan.{tag}@example.com")]
        assert f"ada.{tag}" not in str(await _get(sales, roles, f"/inbox/{item['lead_id']}"))


async def test_an_analyst_who_is_also_a_rep_is_a_rep(sales: Sales) -> None:
    await _grant(sales)
    contact = (await _records(sales))["contact"]
    listed = (await _get(sales, ["analyst", "sales_rep"], "/contacts", limit=200))["items"]
    assert contact["id"] not in {c["id"] for c in listed}  # another rep's book
    r = await sales.client.get(
        f"/contacts/{contact['id']}", headers=sales.headers_of(["analyst", "sales_rep"])
    )
    assert r.status_code == 403, r.text


async def test_sales_managers_admins_and_an_analyst_who_manages_see_real_people(sales: Sales) -> None:
    await _grant(sales)
    rec = await _records(sales)
    contact, tag = rec["contact"], rec["tag"]
    for roles in REAL:
        c = _find((await _get(sales, roles, "/contacts", limit=200))["items"], "id", contact["id"])
        assert (c["email"], c["name"], c["phone"]) == (
            f"grace.{tag}@example.com",
            "Grace Hopper",
            "+1 555 0100",
        )
        assert f"grace.{tag}@example.com" in await _get(sales, roles, "/contacts/export")
        assert f"ada.{tag}@example.com" in str(await _get(sales, roles, "/inbox", limit=200))


async def test_pseudonymised_users_cannot_search_sales_lists_by_the_people_in_them(sales: Sales) -> None:
    """A search matched against real names and e-mails would tell an analyst that a person
    they know is in sales' books: ``q`` on the inbox, contacts and opportunities (and their
    exports), sorting contacts by name and filtering on a text custom field are refused (403
    naming the parameter); a sales manager searches as before."""
    await _grant(sales)
    rec = await _records(sales)
    email = rec["contact"]["email"]
    admin = sales.headers("admin", "root")
    text_field = [{"key": "close_note", "label": "Close note", "type": "text"}]
    r = await sales.client.put("/custom-fields/opportunity", json={"fields": text_field}, headers=admin)
    assert r.status_code == 200, r.text
    refused = (
        ("/inbox", {"q": rec["tag"]}, "query.q"),
        ("/inbox/export", {"q": rec["tag"]}, "query.q"),
        ("/contacts", {"q": email}, "query.q"),
        ("/contacts/export", {"q": email}, "query.q"),
        ("/contacts", {"sort": "name"}, "query.sort"),
        ("/opportunities", {"q": rec["tag"]}, "query.q"),
        ("/opportunities", {"cf": "close_note=Ada"}, "query.cf"),
    )
    for roles in PSEUDONYMISED:
        for path, params, field in refused:
            r = await sales.client.get(path, params=params, headers=sales.headers_of(roles))
            assert r.status_code == 403, (roles, path, params, r.text)
            assert r.json()["details"]["field"] == field, r.text
            assert email not in r.text
    for roles in REAL:
        found = await _get(sales, roles, "/contacts", q=email)
        assert [c["email"] for c in found["items"]] == [email], roles
    # A text custom value may be about a person: withheld from them like free text.
    opp_path = f"/opportunities/{rec['opportunity']['id']}"
    r = await sales.client.patch(
        opp_path, json={"custom": {"close_note": "Ada's cousin"}}, headers=sales.manager()
    )
    assert r.status_code == 200, r.text
    for roles in PSEUDONYMISED:
        assert (await _get(sales, roles, opp_path))["custom"] == {"close_note": "[withheld]"}, roles
    assert (await _get(sales, ["sales_manager"], opp_path))["custom"] == {"close_note": "Ada's cousin"}
