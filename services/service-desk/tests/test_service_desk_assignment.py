"""CSM roster, configuration, and round-robin assignment under concurrency (real mongod).

The app runs without its consumer here: the deal.won handler is driven directly,
many at once, through the platform's unit of work, as concurrent consumers would.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import httpx
import pytest
from crm_contracts import envelope_for
from crm_contracts.events.sales import DealWonV1
from crm_platform.mongo import Tx
from crm_platform.settings import ServiceSettings
from crm_platform.testing import running_app, token_for
from crm_platform.uow import bind_event
from fastapi import FastAPI
from service_desk.handlers.accounts import on_deal_won
from service_desk.main import create_app

pytestmark = pytest.mark.integration


def headers_for(roles: list[str], user_id: str, name: str | None = None) -> dict[str, str]:
    """A token whose ``sub`` (the identity the desk uses) is ``user_id``; its display ``name``
    is ``name`` (default: the id), which the desk must never compare."""
    return {"Authorization": f"Bearer {token_for(roles, name or user_id, user_id=user_id)}"}


ADMIN = headers_for(["admin"], "ada.admin")
CSM = headers_for(["customer_success_manager"], "carla.csm")
REP = headers_for(["service_rep"], "rita.rep")


@pytest.fixture(scope="module")
async def app_client(
    desk_settings: Callable[..., ServiceSettings],
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(desk_settings(CRM_CONSUMER_ENABLED=False))
    async with running_app(app) as client:
        yield app, client


async def _deliver(app: FastAPI, deal: DealWonV1) -> None:
    """The consumer's handler, in a transaction of its own (as the platform consumer runs it)."""
    handler = bind_event(app.state.uow, on_deal_won)
    env = envelope_for(deal, source="sales", correlation_id=f"journey-{deal.deal_id}")

    async def work(tx: Tx) -> None:
        await handler(tx, deal, env)

    await app.state.runtime.store.transaction(work)


async def _accounts(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    r = await client.get("/accounts", params={"limit": 500, **params}, headers=ADMIN)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


async def test_roster_read_and_replace_with_role_checks(
    app_client: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    _, client = app_client
    r = await client.get("/csms", headers=REP)
    assert r.status_code == 200
    roster = {
        "csms": [
            {"user_id": "zoe.csm"},
            {"user_id": "bob.csm", "active": False},
            {"user_id": "carla.csm", "active": True},
        ]
    }
    r = await client.put("/csms", json=roster, headers=REP)
    assert r.status_code == 403
    r = await client.put("/csms", json=roster, headers=CSM)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [c["user_id"] for c in body["csms"]] == ["bob.csm", "carla.csm", "zoe.csm"]
    assert body["active"] == ["carla.csm", "zoe.csm"]
    assert body["updated_by"] == "carla.csm"
    assert (await client.get("/csms", headers=REP)).json()["active"] == ["carla.csm", "zoe.csm"]

    r = await client.put(
        "/csms", json={"csms": [{"user_id": "zoe.csm"}, {"user_id": "zoe.csm"}]}, headers=ADMIN
    )
    assert r.status_code == 422
    assert "listed twice" in r.json()["message"]
    r = await client.put("/csms", json={"csms": [{"user_id": ""}]}, headers=ADMIN)
    assert r.status_code == 422
    assert "body.csms.0.user_id" in [f["field"] for f in r.json()["fields"]]
    r = await client.get("/csms", headers=headers_for(["marketing"], "mo"))
    assert r.status_code == 403


async def test_round_robin_is_even_under_concurrent_deals(
    app_client: tuple[FastAPI, httpx.AsyncClient], make_deal: Callable[..., DealWonV1]
) -> None:
    app, client = app_client
    r = await client.put(
        "/csms",
        json={
            "csms": [{"user_id": u} for u in ("ann.csm", "ben.csm", "cat.csm")]
            + [{"user_id": "dan.csm", "active": False}]
        },
        headers=ADMIN,
    )
    assert r.status_code == 200
    deals = [make_deal(account_name=f"Concurrent {n}") for n in range(9)]
    await asyncio.gather(*(_deliver(app, d) for d in deals))

    ids = {d.deal_id for d in deals}
    mine = [a for a in await _accounts(client) if a["deal_id"] in ids]
    assert len(mine) == 9
    assert Counter(a["csm"] for a in mine) == {"ann.csm": 3, "ben.csm": 3, "cat.csm": 3}


@pytest.mark.parametrize("roster", [["ann.csm", "ben.csm"], []], ids=["with-csms", "no-active-csm"])
async def test_the_same_deal_twice_at_once_makes_one_account(
    app_client: tuple[FastAPI, httpx.AsyncClient], make_deal: Callable[..., DealWonV1], roster: list[str]
) -> None:
    """Concurrent deliveries under different event ids: one account, one onboarding_started.

    The transactions collide on the unique deal_id index (the round-robin turn is taken
    outside them, crm_platform.counters); the loser is retried and sees the account.
    """
    app, client = app_client
    r = await client.put("/csms", json={"csms": [{"user_id": u} for u in roster]}, headers=ADMIN)
    assert r.status_code == 200
    deal = make_deal()
    await asyncio.gather(*(_deliver(app, deal) for _ in range(6)))
    [account] = await _accounts(client, deal_id=deal.deal_id)
    await _deliver(app, deal)
    assert len(await _accounts(client, deal_id=deal.deal_id)) == 1
    outbox = app.state.runtime.db["outbox"]
    started = await outbox.find(
        {"event_type": "account.onboarding_started", "envelope.payload.deal_id": deal.deal_id}
    ).to_list()
    assert len(started) == 1
    if roster:
        assert account["csm"] in roster
    else:
        # Nobody to assign: the account waits for PUT /accounts/{id}/csm, tickets go to the rep.
        assert account["csm"] is None
        assert started[0]["envelope"]["payload"]["csm"] == "unassigned"
        r = await client.post(
            "/tickets",
            json={"account_id": account["account_id"], "subject": "Hi", "request": "Who is our CSM?"},
            headers=REP,
        )
        assert r.status_code == 201, r.text
        assert r.json()["assignee"] == "rita.rep"
        assert r.json()["priority"] == "normal"


async def test_config_defaults_replace_and_apply_to_new_accounts_and_tickets(
    app_client: tuple[FastAPI, httpx.AsyncClient], make_deal: Callable[..., DealWonV1]
) -> None:
    app, client = app_client
    r = await client.get("/config", headers=REP)
    assert r.status_code == 200
    config = r.json()
    assert config["onboarding_checklist"] == [
        "Kickoff call",
        "Technical setup",
        "Training",
        "First value review",
    ]
    assert config["sla"]["urgent"] == {"first_response_hours": 1.0, "resolution_hours": 8.0}
    assert config["sla"]["low"] == {"first_response_hours": 24.0, "resolution_hours": 120.0}

    new: dict[str, Any] = {
        "onboarding_checklist": ["Kickoff call", "Data migration", "Go-live"],
        "sla": {**config["sla"], "urgent": {"first_response_hours": 0.5, "resolution_hours": 4}},
        "at_risk_fraction": 0.5,
    }
    r = await client.put("/config", json=new, headers=CSM)
    assert r.status_code == 403
    r = await client.put("/config", json=new, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["updated_by"] == "ada.admin"
    assert (await client.get("/config", headers=REP)).json()["onboarding_checklist"][1] == "Data migration"

    broken = {**new, "sla": {k: v for k, v in new["sla"].items() if k != "low"}}
    r = await client.put("/config", json=broken, headers=ADMIN)
    assert r.status_code == 422
    assert "low" in r.text
    r = await client.put("/config", json={**new, "onboarding_checklist": []}, headers=ADMIN)
    assert r.status_code == 422

    deal = make_deal()
    await _deliver(app, deal)
    [account] = await _accounts(client, deal_id=deal.deal_id)
    assert [i["key"] for i in account["onboarding"]["checklist"]] == [
        "kickoff-call",
        "data-migration",
        "go-live",
    ]
    r = await client.post(
        "/tickets",
        json={
            "account_id": account["account_id"],
            "subject": "Down",
            "request": "All down",
            "priority": "urgent",
        },
        headers=REP,
    )
    assert r.status_code == 201, r.text
    ticket = r.json()
    opened = ticket["opened_at"]
    assert (at(ticket["sla"]["first_response_due_at"]) - at(opened)).total_seconds() == 1800
    assert (at(ticket["sla"]["resolution_due_at"]) - at(opened)).total_seconds() == 4 * 3600


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
