"""Every write route of sales leaves an audit entry (issue 9), on the real broker and mongod.

The route list comes from the app's OpenAPI document: a write route added without a
recipe here fails ``test_every_write_route_is_checked``; a recipe whose successful call
leaves no audit entry fails ``test_write_route_is_audited``. Then an opportunity's field
history through ``GET /opportunities/{id}/history``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any, TypeAlias

import httpx
import pytest
from crm_contracts import envelope_for
from crm_contracts.events.service_desk import CommitmentFlaggedV1
from crm_contracts.topics import ACCOUNT_SIGNAL
from crm_platform.testing import assert_audited, eventually, produce_envelope, raise_action_item, write_routes

pytestmark = pytest.mark.integration
Sales: TypeAlias = Any  # conftest.Sales

COMMITMENTS = [{"description": "SSO by go-live"}]


async def _lead(sales: Sales) -> tuple[str, str]:
    """A handed-off lead in the inbox, owned by a fresh active rep: (lead id, rep)."""
    rep = sales.uid("rita")
    await sales.activate(rep)
    item, _ = await sales.qualify()
    if item["owner"] != rep:
        await sales.assign(item["lead_id"], rep)
    return item["lead_id"], rep


async def _opp(sales: Sales) -> tuple[str, str]:
    rep = sales.uid("rob")
    return (await sales.opportunity_for(rep))["id"], rep


async def _assign(sales: Sales) -> httpx.Response:
    rep = sales.uid("ray")
    await sales.activate(rep)
    item, _ = await sales.qualify()
    body = {"owner": rep if item["owner"] != rep else sales.uid("x")}
    if body["owner"] != rep:
        await sales.activate(body["owner"])
    return await sales.client.post(f"/inbox/{item['lead_id']}/assign", json=body, headers=sales.manager())


async def _verdict(sales: Sales, verdict: str, body: dict[str, Any]) -> httpx.Response:
    lead_id, rep = await _lead(sales)
    return await sales.client.post(f"/inbox/{lead_id}/{verdict}", json=body, headers=sales.rep(rep))


async def _accept(sales: Sales) -> httpx.Response:
    return await _verdict(sales, "accept", {})


async def _reject(sales: Sales) -> httpx.Response:
    return await _verdict(sales, "reject", {"reason_code": "no_need"})


async def _recycle(sales: Sales) -> httpx.Response:
    return await _verdict(sales, "recycle", {"reason_code": "bad_timing"})


async def _stage(sales: Sales) -> httpx.Response:
    opp_id, rep = await _opp(sales)
    body = {"stage": "discovery", "fields": {"budget": 1000, "decision_maker": "Ada"}}
    return await sales.client.post(f"/opportunities/{opp_id}/stage", json=body, headers=sales.rep(rep))


async def _edit(sales: Sales) -> httpx.Response:
    opp_id, rep = await _opp(sales)
    body = {"fields": {"amount": 5000}}
    return await sales.client.patch(f"/opportunities/{opp_id}", json=body, headers=sales.rep(rep))


async def _activity(sales: Sales) -> httpx.Response:
    opp_id, rep = await _opp(sales)
    body = {"type": "call", "summary": "Intro call"}
    return await sales.client.post(f"/opportunities/{opp_id}/activities", json=body, headers=sales.rep(rep))


async def _review(sales: Sales) -> httpx.Response:
    opp_id, rep = await _opp(sales)
    body = {"fields": {"amount": 90000, "commitments": COMMITMENTS}}
    r = await sales.client.patch(f"/opportunities/{opp_id}", json=body, headers=sales.rep(rep))
    assert r.status_code == 200, r.text
    return await sales.client.post(f"/opportunities/{opp_id}/commitment-review", headers=sales.rep(rep))


async def _flagged(sales: Sales) -> tuple[str, str, str]:
    """A won deal whose commitment customer success flagged after the win: (deal, flag, rep)."""
    rep = sales.uid("fay")
    opp = await sales.opportunity_for(rep)
    products = [{"sku": "CRM", "name": "CRM seat", "quantity": 1, "unit_price": 400.0}]
    won = await sales.move(
        opp["id"], "won", rep, fields={"amount": 400, "products": products, "commitments": COMMITMENTS}
    )
    assert won.status_code == 200, won.text
    deal = won.json()
    flag = CommitmentFlaggedV1(
        flag_id=sales.uid("flag"),
        account_id="acct-1",
        deal_id=deal["id"],
        commitment_id=deal["commitments"][0]["commitment_id"],
        reason="not on the roadmap",
        flagged_by="carla",
    )
    env = envelope_for(flag, source="service-desk", correlation_id="j")
    await produce_envelope(sales.settings.kafka_bootstrap_servers, ACCOUNT_SIGNAL, env)

    async def recorded() -> bool:
        return bool((await sales.opportunity(deal["id"], sales.rep(rep)))["commitment_flags"])

    await eventually(recorded, what="the flag on the won deal")
    return deal["id"], flag.flag_id, rep


async def _flag_acknowledge(sales: Sales) -> httpx.Response:
    deal_id, flag_id, rep = await _flagged(sales)
    url = f"/opportunities/{deal_id}/commitment-flags/{flag_id}/acknowledge"
    return await sales.client.post(url, headers=sales.rep(rep))


async def _flag_resolve(sales: Sales) -> httpx.Response:
    deal_id, flag_id, rep = await _flagged(sales)
    url = f"/opportunities/{deal_id}/commitment-flags/{flag_id}/resolve"
    return await sales.client.post(url, json={"resolution": "phased delivery agreed"}, headers=sales.rep(rep))


async def _roster(sales: Sales) -> httpx.Response:
    current = (await sales.client.get("/reps", headers=sales.manager())).json()
    reps = [{"user_id": r["user_id"], "active": r["active"]} for r in current["reps"]]
    reps.append({"user_id": sales.uid("new"), "active": True})
    return await sales.client.put("/reps", json={"reps": reps}, headers=sales.manager())


async def _rep(sales: Sales) -> httpx.Response:
    return await sales.client.put(f"/reps/{sales.uid('rep')}", json={"active": True}, headers=sales.manager())


async def _config(sales: Sales) -> httpx.Response:
    body = {"lead_response_sla_minutes": 45}
    return await sales.client.put("/config", json=body, headers=sales.manager())


async def _policy(sales: Sales) -> httpx.Response:
    body = {"value_threshold": None, "commitment_threshold": None}
    return await sales.client.put("/config/commitment-review", json=body, headers=sales.manager())


async def _pipeline(sales: Sales) -> httpx.Response:
    current = (await sales.client.get("/pipeline", headers=sales.manager())).json()
    stages = [
        {"name": s["name"], "probability": s["probability"], "required_fields": s["required_fields"]}
        for s in current["stages"]
    ]
    stages[0]["probability"] = 0.15 if stages[0]["probability"] != 0.15 else 0.1
    return await sales.client.put("/pipeline", json={"stages": stages}, headers=sales.manager())


async def _item(sales: Sales) -> str:
    return await raise_action_item(sales.runtime.store, "sales")


async def _item_accept(sales: Sales) -> httpx.Response:
    return await sales.client.post(f"/action-queue/{await _item(sales)}/accept", headers=sales.rep("ria"))


async def _item_assign(sales: Sales) -> httpx.Response:
    url = f"/action-queue/{await _item(sales)}/assign"
    return await sales.client.post(url, json={"assignee": "ria"}, headers=sales.manager())


async def _item_complete(sales: Sales) -> httpx.Response:
    url = f"/action-queue/{await _item(sales)}/complete"
    return await sales.client.post(url, json={"note": "called them"}, headers=sales.rep("ria"))


async def _item_decline(sales: Sales) -> httpx.Response:
    url = f"/action-queue/{await _item(sales)}/decline"
    return await sales.client.post(url, json={"reason": "not sales'"}, headers=sales.rep("ria"))


async def _account(sales: Sales) -> httpx.Response:
    body = {"name": sales.uid("Acme"), "source": "referral"}
    return await sales.client.post("/accounts", json=body, headers=sales.rep(sales.uid("ann")))


async def _contact(sales: Sales) -> httpx.Response:
    body = {"email": f"{sales.uid('c')}@example.com", "name": "Cy", "source": "outbound"}
    return await sales.client.post("/contacts", json=body, headers=sales.rep(sales.uid("cid")))


async def _direct_opportunity(sales: Sales) -> httpx.Response:
    rep = sales.uid("dot")
    account = await _account_of(sales, rep)
    body = {"account_id": account, "source": "outbound"}
    return await sales.client.post("/opportunities", json=body, headers=sales.rep(rep))


async def _account_of(sales: Sales, rep: str) -> str:
    r = await sales.client.post(
        "/accounts", json={"name": sales.uid("Own"), "source": "outbound"}, headers=sales.rep(rep)
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def _contact_import(sales: Sales) -> httpx.Response:
    return await sales.client.post("/contacts/imports", json={"format": "csv"}, headers=sales.rep("cim"))


async def _contact_upload(sales: Sales) -> httpx.Response:
    job = (await _contact_import(sales)).json()
    data = f"email,name\n{sales.uid('i')}@example.com,Ivy\n".encode()
    headers = {**sales.rep("cim"), "Content-Type": "text/csv"}
    return await sales.client.put(f"/contacts/imports/{job['id']}/file", content=data, headers=headers)


async def _contact_mapping(sales: Sales) -> httpx.Response:
    body = {"columns": {"Mail": "email", "Who": "name"}}
    url = f"/contacts/import-mappings/{sales.uid('m')}"
    return await sales.client.put(url, json=body, headers=sales.rep("cim"))


async def _custom_fields(sales: Sales) -> httpx.Response:
    body = {"fields": [{"key": "segment", "label": "Segment", "type": "choice", "choices": ["smb", "ent"]}]}
    return await sales.client.put("/custom-fields/account", json=body, headers=sales.headers("admin", "root"))


RECIPES: dict[str, Callable[[Sales], Awaitable[httpx.Response]]] = {
    "POST /accounts": _account,
    "PUT /custom-fields/{record_type}": _custom_fields,
    "POST /contacts/imports": _contact_import,
    "PUT /contacts/imports/{import_id}/file": _contact_upload,
    "PUT /contacts/import-mappings/{name}": _contact_mapping,
    "POST /contacts": _contact,
    "POST /opportunities": _direct_opportunity,
    "POST /inbox/{lead_id}/assign": _assign,
    "POST /inbox/{lead_id}/accept": _accept,
    "POST /inbox/{lead_id}/reject": _reject,
    "POST /inbox/{lead_id}/recycle": _recycle,
    "POST /opportunities/{opportunity_id}/stage": _stage,
    "PATCH /opportunities/{opportunity_id}": _edit,
    "POST /opportunities/{opportunity_id}/activities": _activity,
    "POST /opportunities/{opportunity_id}/commitment-review": _review,
    "POST /opportunities/{opportunity_id}/commitment-flags/{flag_id}/acknowledge": _flag_acknowledge,
    "POST /opportunities/{opportunity_id}/commitment-flags/{flag_id}/resolve": _flag_resolve,
    "PUT /reps": _roster,
    "PUT /reps/{user_id}": _rep,
    "PUT /config": _config,
    "PUT /config/commitment-review": _policy,
    "PUT /pipeline": _pipeline,
    "POST /action-queue/{item_id}/accept": _item_accept,
    "POST /action-queue/{item_id}/assign": _item_assign,
    "POST /action-queue/{item_id}/complete": _item_complete,
    "POST /action-queue/{item_id}/decline": _item_decline,
}
# Write routes that change no record, each with the reason (none in this service).
NOT_RECORD_CHANGES: dict[str, str] = {}


def test_every_write_route_is_checked(sales: Sales) -> None:
    routes = write_routes(sales.app)
    assert routes - set(RECIPES) - set(NOT_RECORD_CHANGES) == set(), "write routes with no audit check"
    assert set(RECIPES) - routes == set(), "recipes for routes that no longer exist"


@pytest.mark.parametrize("route", sorted(RECIPES))
async def test_write_route_is_audited(sales: Sales, route: str) -> None:
    response = await RECIPES[route](sales)
    entries = await assert_audited(sales.runtime.store.db, response)
    assert all(e["service"] == "sales" for e in entries)


async def test_an_opportunitys_history_shows_each_edit_and_the_handoff_that_made_it(sales: Sales) -> None:
    opp_id, rep = await _opp(sales)
    url = f"/opportunities/{opp_id}"
    for amount in (5000, 7500):
        r = await sales.client.patch(url, json={"fields": {"amount": amount}}, headers=sales.rep(rep))
        assert r.status_code == 200, r.text
    r = await sales.client.get(f"{url}/history", params={"limit": 2}, headers=sales.rep(rep))
    assert r.status_code == 200, r.text
    newest, older = r.json()["items"]
    for entry, before, after in ((newest, 5000, 7500), (older, None, 5000)):
        assert entry["actor"]["user_id"] == rep
        assert entry["operation"] == "PATCH /opportunities/{opportunity_id}"
        [fields] = [c for c in entry["changes"] if c["field"] == "fields"]
        was = (fields["before"] or {}).get("amount")
        assert (None if was is None else Decimal(was)) == before
        assert Decimal(fields["after"]["amount"]) == after
    rest = await sales.client.get(
        f"{url}/history", params={"cursor": r.json()["next_cursor"]}, headers=sales.rep(rep)
    )
    created = rest.json()["items"][-1]
    assert created["action"] == "insert"
    assert created["actor"]["type"] in ("user", "event")
    other = await sales.client.get(f"{url}/history", headers=sales.rep(sales.uid("intruder")))
    assert other.status_code == 403
