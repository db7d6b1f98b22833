"""Every write route of marketing's service leaves an audit entry (issue 9), on the real mongod.

The route list comes from the app itself: a write route added without a recipe here
fails ``test_every_write_route_is_checked``, and a recipe whose successful call leaves no
audit entry fails ``test_write_route_is_audited``. Then the audit API: filters, cursor,
CSV export, and who may read it.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import httpx
import pytest
from crm_platform.testing import assert_audited, auth_headers, raise_action_item, write_routes

pytestmark = pytest.mark.integration
Leads: TypeAlias = Any  # conftest.Leads

MARKETING = auth_headers(["marketing"], "mia")
MANAGER = auth_headers(["marketing_manager"], "max")
ADMIN = auth_headers(["admin"], "root")
AUDITOR = auth_headers(["auditor"], "aud")

RULES = {
    "rules": {
        "page_view": {"weight": 5.0, "cap": 10},
        "email_open": {"weight": 3.0, "cap": 10},
        "form_submit": {"weight": 20.0, "cap": None},
        "trial_signup": {"weight": 40.0, "cap": None},
    },
    "threshold": 60,
}


def lead_body(email: str | None = None) -> dict[str, Any]:
    return {
        "name": "Ada",
        "email": email or f"audit-{uuid.uuid4().hex[:10]}@example.com",
        "source_channel": "webinar",
        "consent": {"marketing_email": True},
    }


async def _item(leads: Leads) -> str:
    return await raise_action_item(leads.runtime.store, "marketing")


async def _capture(leads: Leads) -> httpx.Response:
    return await leads.client.post("/leads", json=lead_body(), headers=MARKETING)


async def _bulk(leads: Leads) -> httpx.Response:
    body = {"leads": [lead_body(), lead_body()]}
    return await leads.client.post("/leads/bulk", json=body, headers=MARKETING)


async def _behaviour(leads: Leads) -> httpx.Response:
    lead = await leads.capture()
    url = f"/leads/{lead['lead']['id']}/behaviours"
    return await leads.client.post(url, json={"behaviour": "page_view"}, headers=MARKETING)


async def _bulk_behaviours(leads: Leads) -> httpx.Response:
    lead = await leads.capture()
    body = {"behaviours": [{"lead_id": lead["lead"]["id"], "behaviour": "page_view"}] * 2}
    return await leads.client.post("/leads/behaviours/bulk", json=body, headers=MARKETING)


async def _edit(leads: Leads) -> httpx.Response:
    lead = await leads.capture()
    url = f"/leads/{lead['lead']['id']}"
    return await leads.client.patch(url, json={"company": "Analytical Engines"}, headers=MARKETING)


async def _rules(leads: Leads) -> httpx.Response:
    return await leads.client.put("/scoring-rules", json=RULES, headers=MARKETING)


async def _accept(leads: Leads) -> httpx.Response:
    return await leads.client.post(f"/action-queue/{await _item(leads)}/accept", headers=MARKETING)


async def _assign(leads: Leads) -> httpx.Response:
    url = f"/action-queue/{await _item(leads)}/assign"
    return await leads.client.post(url, json={"assignee": "user-mia"}, headers=MANAGER)


async def _complete(leads: Leads) -> httpx.Response:
    url = f"/action-queue/{await _item(leads)}/complete"
    return await leads.client.post(url, json={"note": "done"}, headers=MARKETING)


async def _decline(leads: Leads) -> httpx.Response:
    url = f"/action-queue/{await _item(leads)}/decline"
    return await leads.client.post(url, json={"reason": "not ours"}, headers=MARKETING)


async def _new_import(leads: Leads) -> httpx.Response:
    return await leads.client.post("/imports", json={"format": "csv"}, headers=MARKETING)


async def _upload(leads: Leads) -> httpx.Response:
    job = (await _new_import(leads)).json()
    data = f"email,name\n{lead_body()['email']},Ada\n".encode()
    headers = {**MARKETING, "Content-Type": "text/csv"}
    return await leads.client.put(f"/imports/{job['id']}/file", content=data, headers=headers)


async def _mapping(leads: Leads) -> httpx.Response:
    body = {"columns": {"Mail": "email", "Who": "name"}}
    return await leads.client.put(f"/import-mappings/m-{uuid.uuid4().hex[:6]}", json=body, headers=MARKETING)


async def _custom_fields(leads: Leads) -> httpx.Response:
    body = {"fields": [{"key": "segment", "label": "Segment", "type": "choice", "choices": ["smb", "ent"]}]}
    return await leads.client.put("/custom-fields/lead", json=body, headers=ADMIN)


RECIPES: dict[str, Callable[[Leads], Awaitable[httpx.Response]]] = {
    "POST /leads": _capture,
    "POST /leads/bulk": _bulk,
    "POST /leads/behaviours/bulk": _bulk_behaviours,
    "POST /leads/{lead_id}/behaviours": _behaviour,
    "PATCH /leads/{lead_id}": _edit,
    "PUT /scoring-rules": _rules,
    "POST /action-queue/{item_id}/accept": _accept,
    "POST /action-queue/{item_id}/assign": _assign,
    "POST /action-queue/{item_id}/complete": _complete,
    "POST /action-queue/{item_id}/decline": _decline,
    "POST /imports": _new_import,
    "PUT /imports/{import_id}/file": _upload,
    "PUT /import-mappings/{name}": _mapping,
    "PUT /custom-fields/{record_type}": _custom_fields,
}
# Write routes that change no record, each with the reason.
NOT_RECORD_CHANGES: dict[str, str] = {
    "POST /scoring-rules/preview": "scores a draft of the rules over the open leads; nothing is stored",
}


def test_every_write_route_is_checked(leads: Leads) -> None:
    routes = write_routes(leads.app)
    assert routes - set(RECIPES) - set(NOT_RECORD_CHANGES) == set(), "write routes with no audit check"
    assert set(RECIPES) - routes == set(), "recipes for routes that no longer exist"


@pytest.mark.parametrize("route", sorted(RECIPES))
async def test_write_route_is_audited(leads: Leads, route: str) -> None:
    response = await RECIPES[route](leads)
    entries = await assert_audited(leads.runtime.store.db, response)
    assert all(e["service"] == "leads" for e in entries)


async def test_capture_entry_names_who_what_and_the_fields(leads: Leads) -> None:
    response = await leads.client.post(
        "/leads", json=lead_body(), headers={**MARKETING, "X-Correlation-ID": "journey-audit-1"}
    )
    lead_id = response.json()["lead"]["id"]
    entries = await assert_audited(leads.runtime.store.db, response)
    [entry] = [e for e in entries if e["record"]["type"] == "leads"]
    mia = {"type": "user", "user_id": "user-mia", "username": "mia", "roles": ["marketing"]}
    assert entry["actor"] == mia
    assert entry["action"] == "insert"
    assert entry["operation"] == "POST /leads"
    assert entry["record"] == {"type": "leads", "id": lead_id}
    assert entry["correlation_id"] == "journey-audit-1"
    email = {c["field"]: c for c in entry["changes"]}["email"]
    assert email["before"] is None
    assert email["after"] == response.json()["lead"]["email"]


async def test_audit_api_filters_pages_and_exports(leads: Leads) -> None:
    name = f"pager-{uuid.uuid4().hex[:6]}"
    user_id, mine = f"user-{name}", auth_headers(["marketing"], name)
    for _ in range(3):
        r = await leads.client.post("/leads", json=lead_body(), headers=mine)
        assert r.status_code == 201
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"user_id": user_id, "record_type": "leads", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (await leads.client.get("/audit", params=params, headers=AUDITOR)).json()
        seen += [item["record"]["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 3 == len(set(seen))
    export = await leads.client.get("/audit/export", params={"user_id": user_id}, headers=ADMIN)
    assert export.status_code == 200
    assert export.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(export.text)))
    assert sorted(row["record_id"] for row in rows if row["record_type"] == "leads") == sorted(seen)
    assert {row["actor_id"] for row in rows} == {user_id}


async def test_a_bulk_captured_leads_entry_is_found_by_record_and_by_user(leads: Leads) -> None:
    """The bulk paths store one audit entry per batch (crm_platform.audit.one_entry_per_batch);
    each lead of it is still found by its record id and by its user, with its own fields."""
    name = f"bulk-{uuid.uuid4().hex[:6]}"
    user_id, mine = f"user-{name}", auth_headers(["marketing"], name)
    bodies = [lead_body() for _ in range(3)]
    response = await leads.client.post(
        "/leads/bulk", json={"leads": bodies}, headers={**mine, "X-Correlation-ID": f"journey-{name}"}
    )
    ids = [r["lead"]["id"] for r in response.json()["results"]]
    stored = [
        e for e in await assert_audited(leads.runtime.store.db, response) if e["record"]["type"] == "leads"
    ]
    assert [e["record"]["id"] for e in stored] == [ids], "one stored entry naming the batch's leads"

    for lead_id, body in zip(ids, bodies, strict=True):
        params = {"record_type": "leads", "record_id": lead_id}
        [item] = (await leads.client.get("/audit", params=params, headers=AUDITOR)).json()["items"]
        assert item["record"] == {"type": "leads", "id": lead_id}
        assert item["actor"]["user_id"] == user_id
        assert item["actor"]["roles"] == ["marketing"]
        assert (item["action"], item["operation"]) == ("insert", "POST /leads/bulk")
        assert item["request_id"] == response.headers["x-request-id"]
        assert item["correlation_id"] == f"journey-{name}"
        assert item["batch"]["size"] == 3
        email = {c["field"]: c for c in item["changes"]}["email"]
        assert (email["before"], email["after"]) == (None, body["email"])
        history = (await leads.client.get(f"/leads/{lead_id}/history", headers=ADMIN)).json()["items"]
        assert [h["record"]["id"] for h in history] == [lead_id]

    by_user = (await leads.client.get("/audit", params={"user_id": user_id}, headers=AUDITOR)).json()
    assert sorted(i["record"]["id"] for i in by_user["items"] if i["record"]["type"] == "leads") == sorted(
        ids
    )
    export = await leads.client.get("/audit/export", params={"user_id": user_id}, headers=ADMIN)
    rows = [row for row in csv.DictReader(io.StringIO(export.text)) if row["record_type"] == "leads"]
    assert sorted(row["record_id"] for row in rows) == sorted(ids), "one CSV row per lead"


async def test_a_bulk_entry_names_its_leads_and_reads_back_their_inserted_values(leads: Leads) -> None:
    """A bulk batch's audit entry names its new leads without a copy of each (audit.inserts_named:
    542 bytes of BSON per lead in leads and mongod); each lead's insert still reads back with the
    values it was inserted with, a later edit undone, and the edit as its own entry."""
    bodies = [lead_body() for _ in range(3)]
    response = await leads.client.post("/leads/bulk", json={"leads": bodies}, headers=MARKETING)
    assert response.status_code == 200, response.text
    ids = [r["lead"]["id"] for r in response.json()["results"]]
    [stored] = [
        e for e in await assert_audited(leads.runtime.store.db, response) if e["record"]["type"] == "leads"
    ]
    assert [set(r) for r in stored["records"]] == [{"id"}] * 3, "the leads named, not copied"
    edited = await leads.client.patch(f"/leads/{ids[1]}", json={"name": "Ada Edited"}, headers=MARKETING)
    assert edited.status_code == 200, edited.text

    for lead_id, body in zip(ids, bodies, strict=True):
        params = {"record_type": "leads", "record_id": lead_id}
        items = (await leads.client.get("/audit", params=params, headers=AUDITOR)).json()["items"]
        [insert] = [i for i in items if i["action"] == "insert"]
        inserted = {c["field"]: (c["before"], c["after"]) for c in insert["changes"]}
        assert inserted["email"] == (None, body["email"])
        assert inserted["name"] == (None, "Ada"), "the name it was inserted with, the edit undone"
        assert inserted["status"] == (None, "new")
        assert "list_keys" not in inserted, "a derived field is listed by no entry"
    history = (await leads.client.get(f"/leads/{ids[1]}/history", headers=ADMIN)).json()["items"]
    [update] = [h for h in history if h["action"] == "update"]
    assert {c["field"]: (c["before"], c["after"]) for c in update["changes"]}["name"] == ("Ada", "Ada Edited")


async def test_only_admins_and_auditors_read_the_audit_log(leads: Leads) -> None:
    for headers in (MARKETING, MANAGER, auth_headers(["analyst"], "ann")):
        assert (await leads.client.get("/audit", headers=headers)).status_code == 403
    assert (await leads.client.get("/audit", headers=AUDITOR)).status_code == 200
    bad = await leads.client.get("/audit", params={"cursor": "nope"}, headers=ADMIN)
    assert bad.status_code == 422
    orphan = await leads.client.get("/audit", params={"record_id": "x"}, headers=ADMIN)
    assert orphan.status_code == 422
