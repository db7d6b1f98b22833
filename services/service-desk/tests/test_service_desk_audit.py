"""Every write route of the service desk leaves an audit entry (issue 9), on the real broker and
mongod: the route list comes from the app's OpenAPI document, a route without a check here
fails ``test_every_write_route_is_checked``, a successful call without an entry fails
``test_write_route_is_audited``. An account's and a ticket's history read the same log."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from crm_contracts import envelope_for, topics, utcnow
from crm_contracts.access import CONSUMES
from crm_contracts.events.common import Money
from crm_contracts.events.sales import Commitment, CommitmentReviewRequestedV1, DealWonV1
from crm_platform.settings import ServiceSettings
from crm_platform.testing import (
    assert_audited,
    eventually,
    produce_envelope,
    raise_action_item,
    running_app,
    start_group_at_end,
    token_for,
    write_routes,
)
from fastapi import FastAPI
from service_desk.main import create_app

pytestmark = pytest.mark.integration


def headers_for(role: str, user_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_for([role], user_id, user_id=user_id)}"}


ADMIN = headers_for("admin", "ada.admin")
REP = headers_for("service_rep", "rita.rep")
LEAD = headers_for("service_lead", "lea.lead")
CSMS = ("carla.csm", "dora.csm")


@dataclass
class Sd:
    app: FastAPI
    client: httpx.AsyncClient
    bootstrap: str

    @property
    def db(self) -> Any:
        return self.app.state.runtime.store.db

    async def account(self) -> dict[str, Any]:
        deal = self.make_deal(f"deal-{uuid.uuid4().hex[:10]}")
        env = envelope_for(deal, source="sales", correlation_id=f"journey-{deal.deal_id}")
        await produce_envelope(self.bootstrap, topics.DEAL_WON, env)

        async def landed() -> dict[str, Any] | None:
            r = await self.client.get("/accounts", params={"deal_id": deal.deal_id}, headers=ADMIN)
            items = r.json()["items"] if r.status_code == 200 else []
            return items[0] if items else None

        found: dict[str, Any] = await eventually(landed, what=f"account for {deal.deal_id}")
        return found

    @staticmethod
    def make_deal(deal_id: str) -> DealWonV1:
        return DealWonV1(
            deal_id=deal_id,
            lead_id=f"lead-{deal_id}",
            account_name="Acme GmbH",
            contacts=[{"name": "Ada", "email": "ada@acme.example", "role": "CTO"}],
            products=[{"sku": "CRM-ENT", "name": "CRM Enterprise", "quantity": 50, "unit_price": 90.0}],
            value=Money(amount=54000.0),
            commitments=[Commitment(commitment_id="c-sso", description="SSO by go-live")],
            sales_owner="sam.sales",
            won_at=utcnow(),
        )

    async def ticket(self) -> dict[str, Any]:
        account = await self.account()
        body = {"account_id": account["account_id"], "subject": "Cannot log in", "request": "SSO fails"}
        r = await self.client.post("/tickets", json=body, headers=REP)
        assert r.status_code == 201, r.text
        return dict(r.json())


@pytest.fixture(scope="module")
async def sd(desk_settings: Callable[..., ServiceSettings], kafka_bootstrap: str) -> AsyncIterator[Sd]:
    settings = desk_settings()
    await start_group_at_end(kafka_bootstrap, settings.group_id, list(CONSUMES["service-desk"]))
    app = create_app(settings)
    async with running_app(app) as client:
        roster = {"csms": [{"user_id": u, "active": True} for u in CSMS]}
        assert (await client.put("/csms", json=roster, headers=ADMIN)).status_code == 200
        yield Sd(app, client, kafka_bootstrap)


async def _checklist(sd: Sd) -> httpx.Response:
    account = await sd.account()
    key = account["onboarding"]["checklist"][0]["key"]
    return await sd.client.post(f"/accounts/{account['account_id']}/checklist/{key}/complete", headers=ADMIN)


async def _csm(sd: Sd) -> httpx.Response:
    account = await sd.account()
    other = next(u for u in CSMS if u != account["csm"])
    return await sd.client.put(
        f"/accounts/{account['account_id']}/csm", json={"user_id": other}, headers=ADMIN
    )


async def _signal(sd: Sd) -> httpx.Response:
    account = await sd.account()
    body = {"kind": "upsell", "description": "Wants 20 more seats", "estimated_value": 18000}
    return await sd.client.post(f"/accounts/{account['account_id']}/signals", json=body, headers=REP)


async def _flag(sd: Sd) -> httpx.Response:
    account = await sd.account()
    url = f"/accounts/{account['account_id']}/commitments/c-sso/flag"
    return await sd.client.post(url, json={"reason": "not on our roadmap"}, headers=REP)


async def _deliver(sd: Sd) -> httpx.Response:
    account = await sd.account()
    return await sd.client.post(f"/accounts/{account['account_id']}/commitments/c-sso/deliver", headers=ADMIN)


async def _open(sd: Sd) -> httpx.Response:
    account = await sd.account()
    body = {"account_id": account["account_id"], "subject": "Cannot log in", "request": "SSO fails"}
    return await sd.client.post("/tickets", json=body, headers=REP)


async def _progress(sd: Sd) -> httpx.Response:
    ticket = await sd.ticket()
    return await sd.client.post(
        f"/tickets/{ticket['ticket_id']}/progress", json={"note": "on it"}, headers=REP
    )


async def _custom_fields(sd: Sd) -> httpx.Response:
    body = {
        "fields": [{"key": "component", "label": "Component", "type": "choice", "choices": ["api", "ui"]}]
    }
    return await sd.client.put("/custom-fields/ticket", json=body, headers=ADMIN)


async def _edit_ticket(sd: Sd) -> httpx.Response:
    assert (await _custom_fields(sd)).status_code == 200
    ticket = await sd.ticket()
    return await sd.client.patch(
        f"/tickets/{ticket['ticket_id']}", json={"custom": {"component": "api"}}, headers=REP
    )


async def _resolve(sd: Sd) -> httpx.Response:
    ticket = await sd.ticket()
    url = f"/tickets/{ticket['ticket_id']}/resolve"
    return await sd.client.post(url, json={"result": "certificate rotated"}, headers=REP)


async def _csat(sd: Sd) -> httpx.Response:
    ticket = await sd.ticket()
    r = await sd.client.post(f"/tickets/{ticket['ticket_id']}/resolve", json={"result": "done"}, headers=REP)
    assert r.status_code == 200, r.text
    return await sd.client.post(f"/tickets/{ticket['ticket_id']}/csat-survey", headers=REP)


async def _nps(sd: Sd) -> httpx.Response:
    account = await sd.account()
    return await sd.client.post(f"/accounts/{account['account_id']}/nps-survey", headers=REP)


async def _roster(sd: Sd) -> httpx.Response:
    roster = {"csms": [{"user_id": u, "active": True} for u in (*CSMS, f"csm-{uuid.uuid4().hex[:6]}")]}
    return await sd.client.put("/csms", json=roster, headers=ADMIN)


async def _put_back(sd: Sd, path: str, change: Callable[[dict[str, Any]], dict[str, Any]]) -> httpx.Response:
    current = (await sd.client.get(path, headers=ADMIN)).json()
    return await sd.client.put(path, json=change(current), headers=ADMIN)


def _sla(config: dict[str, Any]) -> dict[str, Any]:
    body = {k: v for k, v in config.items() if k not in ("version", "updated_at", "updated_by")}
    return body


async def _config(sd: Sd) -> httpx.Response:
    return await _put_back(sd, "/config", _sla)


async def _success_config(sd: Sd) -> httpx.Response:
    return await _put_back(sd, "/success/config", _sla)


async def _health_rules(sd: Sd) -> httpx.Response:
    return await _put_back(sd, "/health/rules", lambda current: current["rules"])


async def _tier(sd: Sd) -> httpx.Response:
    account = await sd.account()
    tiers = (await sd.client.get("/success/config", headers=ADMIN)).json()["tiers"]
    names = [t["name"] for t in tiers if t["name"] != account.get("tier")]
    return await sd.client.put(
        f"/accounts/{account['account_id']}/tier", json={"tier": names[0]}, headers=ADMIN
    )


async def _account_manager(sd: Sd) -> httpx.Response:
    account = await sd.account()
    url = f"/accounts/{account['account_id']}/account-manager"
    return await sd.client.put(url, json={"user_id": CSMS[1], "reason": "key account"}, headers=ADMIN)


async def _renewal(sd: Sd) -> httpx.Response:
    account = await sd.account()
    body = {"outcome": "churned", "churn_reason": "price"}
    return await sd.client.post(f"/accounts/{account['account_id']}/renewals", json=body, headers=ADMIN)


async def _checkin(sd: Sd) -> httpx.Response:
    account = await sd.account()
    body = {"held_at": utcnow().isoformat(), "attendees": ["Ada"], "sentiment": "positive"}
    return await sd.client.post(f"/accounts/{account['account_id']}/checkins", json=body, headers=ADMIN)


async def _usage(sd: Sd) -> httpx.Response:
    account = await sd.account()
    body = {"active_users": 7, "licensed_users": 50, "as_of": utcnow().isoformat()}
    return await sd.client.put(f"/accounts/{account['account_id']}/usage", json=body, headers=ADMIN)


async def _recompute(sd: Sd) -> httpx.Response:
    account = await sd.account()
    body = {"active_users": 1, "licensed_users": 50, "as_of": utcnow().isoformat()}
    await sd.client.put(f"/accounts/{account['account_id']}/usage", json=body, headers=ADMIN)
    return await sd.client.post("/health/recompute", headers=ADMIN)


async def _send_due(sd: Sd) -> httpx.Response:
    await sd.account()
    return await sd.client.post("/surveys/nps/send-due", headers=ADMIN)


async def _verdict(sd: Sd) -> httpx.Response:
    review_id = f"rev-{uuid.uuid4().hex[:10]}"
    event = CommitmentReviewRequestedV1(
        review_id=review_id,
        deal_id=f"deal-{review_id}",
        account_name="Acme GmbH",
        sales_owner="sam.sales",
        value=Money(amount=180000.0),
        commitments=[Commitment(commitment_id="c-sso", description="SSO by go-live")],
        reasons=["value reaches the review threshold"],
        requested_by="sam.sales",
        requested_at=utcnow(),
    )
    env = envelope_for(event, source="sales", correlation_id=f"journey-{review_id}")
    await produce_envelope(sd.bootstrap, topics.COMMITMENT_REVIEWS, env)
    url = f"/commitment-reviews/{review_id}"

    async def landed() -> bool:
        return (await sd.client.get(url, headers=ADMIN)).status_code == 200

    await eventually(landed, what=f"review {review_id}")
    body = {"decisions": [{"commitment_id": "c-sso", "decision": "approved"}]}
    return await sd.client.post(f"{url}/verdict", json=body, headers=ADMIN)


async def _raise(sd: Sd) -> httpx.Response:
    account = await sd.account()
    body = {
        "department": "sales",
        "title": "Follow up on the missing SAP export",
        "due_at": (utcnow() + timedelta(days=7)).isoformat(),
        "account_id": account["account_id"],
        "source": {"kind": "survey", "record_id": "srv-1"},
    }
    return await sd.client.post("/action-items", json=body, headers=REP)


async def _item(sd: Sd) -> str:
    return await raise_action_item(sd.app.state.runtime.store, "customer-success")


async def _item_accept(sd: Sd) -> httpx.Response:
    return await sd.client.post(f"/action-queue/{await _item(sd)}/accept", headers=REP)


async def _item_assign(sd: Sd) -> httpx.Response:
    url = f"/action-queue/{await _item(sd)}/assign"
    return await sd.client.post(url, json={"assignee": "rita.rep"}, headers=LEAD)


async def _item_complete(sd: Sd) -> httpx.Response:
    return await sd.client.post(f"/action-queue/{await _item(sd)}/complete", json={"note": "ok"}, headers=REP)


async def _item_decline(sd: Sd) -> httpx.Response:
    url = f"/action-queue/{await _item(sd)}/decline"
    return await sd.client.post(url, json={"reason": "duplicate"}, headers=REP)


RECIPES: dict[str, Callable[[Sd], Awaitable[httpx.Response]]] = {
    "POST /accounts/{account_id}/checklist/{item}/complete": _checklist,
    "PUT /accounts/{account_id}/csm": _csm,
    "POST /accounts/{account_id}/signals": _signal,
    "POST /accounts/{account_id}/commitments/{commitment_id}/flag": _flag,
    "POST /accounts/{account_id}/commitments/{commitment_id}/deliver": _deliver,
    "POST /tickets": _open,
    "POST /tickets/{ticket_id}/progress": _progress,
    "PATCH /tickets/{ticket_id}": _edit_ticket,
    "PUT /custom-fields/{record_type}": _custom_fields,
    "POST /tickets/{ticket_id}/resolve": _resolve,
    "POST /tickets/{ticket_id}/csat-survey": _csat,
    "POST /accounts/{account_id}/nps-survey": _nps,
    "PUT /csms": _roster,
    "PUT /config": _config,
    "PUT /success/config": _success_config,
    "PUT /health/rules": _health_rules,
    "PUT /accounts/{account_id}/tier": _tier,
    "PUT /accounts/{account_id}/account-manager": _account_manager,
    "POST /accounts/{account_id}/renewals": _renewal,
    "POST /accounts/{account_id}/checkins": _checkin,
    "PUT /accounts/{account_id}/usage": _usage,
    "POST /health/recompute": _recompute,
    "POST /surveys/nps/send-due": _send_due,
    "POST /commitment-reviews/{review_id}/verdict": _verdict,
    "POST /action-items": _raise,
    "POST /action-queue/{item_id}/accept": _item_accept,
    "POST /action-queue/{item_id}/assign": _item_assign,
    "POST /action-queue/{item_id}/complete": _item_complete,
    "POST /action-queue/{item_id}/decline": _item_decline,
}
# Write routes checked differently, each with the reason.
NOT_USER_CHANGES = {
    "POST /public/surveys/{token}": "a customer's answer without a login: audited as actor 'public' "
    "(test_a_survey_answer_is_audited_as_public)",
}


async def test_every_write_route_is_checked(sd: Sd) -> None:
    routes = write_routes(sd.app)
    assert routes - set(RECIPES) - set(NOT_USER_CHANGES) == set(), "write routes with no audit check"
    assert (set(RECIPES) | set(NOT_USER_CHANGES)) - routes == set(), "checks of routes that are gone"


@pytest.mark.parametrize("route", sorted(RECIPES))
async def test_write_route_is_audited(sd: Sd, route: str) -> None:
    entries = await assert_audited(sd.db, await RECIPES[route](sd))
    assert all(e["service"] == "service-desk" for e in entries)


async def test_a_survey_answer_is_audited_as_public(sd: Sd) -> None:
    r = await _nps(sd)
    assert r.status_code in (200, 201), r.text
    token = r.json()["link"].rsplit("/", 1)[-1]
    answer = await sd.client.post(f"/public/surveys/{token}", json={"score": 9})
    assert answer.status_code == 200, answer.text
    entries = [doc async for doc in sd.db["audit_log"].find({"request_id": answer.headers["x-request-id"]})]
    assert entries
    assert {e["actor"]["type"] for e in entries} == {"public"}


async def test_a_tickets_history_and_the_audit_api(sd: Sd) -> None:
    ticket = await sd.ticket()
    tid = ticket["ticket_id"]
    r = await sd.client.post(f"/tickets/{tid}/progress", json={"note": "on it"}, headers=REP)
    assert r.status_code == 200, r.text
    history = await sd.client.get(f"/tickets/{tid}/history", headers=REP)
    assert history.status_code == 200, history.text
    newest, opened = history.json()["items"][0], history.json()["items"][-1]
    assert newest["operation"] == "POST /tickets/{ticket_id}/progress"
    assert newest["actor"]["user_id"] == "rita.rep"
    assert opened["action"] == "insert"
    account = await sd.client.get(f"/accounts/{ticket['account_id']}/history", headers=ADMIN)
    assert account.status_code == 200, account.text
    assert account.json()["items"][-1]["actor"]["type"] == "event", "the account was opened by deal.won"
    audit = await sd.client.get("/audit", params={"record_type": "tickets", "record_id": tid}, headers=ADMIN)
    assert [e["id"] for e in audit.json()["items"]] == [e["id"] for e in history.json()["items"]]
    auditor = headers_for("auditor", "aud.itor")
    assert (await sd.client.get("/audit/export", headers=auditor)).status_code == 200
    assert (await sd.client.get("/audit", headers=REP)).status_code == 403
