"""Accounts over their whole life through the real app, broker and mongod: a ``deal.won`` v2
with its contract term, tiers and account managers, the renewal list and a recorded renewal."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from crm_contracts import envelope_for, topics, utcnow
from crm_contracts.events.common import Money
from crm_contracts.events.sales import ContractTerm, DealWonV1, DealWonV2, add_months
from crm_platform.clock import ManualClock
from crm_platform.settings import ServiceSettings
from crm_platform.testing import (
    TopicReader,
    eventually,
    produce_envelope,
    running_app,
    start_group_at_end,
    token_for,
)
from service_desk.main import create_app

pytestmark = pytest.mark.integration


def headers(roles: list[str], user_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_for(roles, user_id, user_id=user_id)}"}


ADMIN = headers(["admin"], "u-admin")
REP = headers(["service_rep"], "u-rep")
CARLA = headers(["customer_success_manager"], "u-carla")
DORA = headers(["customer_success_manager"], "u-dora")


class Life:
    def __init__(self, client: httpx.AsyncClient, clock: ManualClock, bootstrap: str) -> None:
        self.client, self.clock, self.bootstrap = client, clock, bootstrap
        self.events = TopicReader(bootstrap, topics.SERVICE_DESK_EVENTS)

    async def win(self, deal: DealWonV1) -> dict[str, Any]:
        await produce_envelope(
            self.bootstrap, topics.DEAL_WON, envelope_for(deal, source="sales", correlation_id="j-1")
        )

        async def check() -> dict[str, Any] | None:
            r = await self.client.get("/accounts", params={"deal_id": deal.deal_id}, headers=ADMIN)
            items = r.json()["items"]
            return items[0] if items else None

        return await eventually(check, what=f"account for {deal.deal_id}")


@pytest.fixture(scope="module")
async def life(desk_settings: Callable[..., ServiceSettings], kafka_bootstrap: str) -> AsyncIterator[Life]:
    clock = ManualClock(utcnow())
    settings = desk_settings()
    await start_group_at_end(kafka_bootstrap, settings.group_id, [topics.DEAL_WON])
    async with running_app(create_app(settings, clock=clock)) as client:
        life = Life(client, clock, kafka_bootstrap)
        await life.events.start()
        roster = {"csms": [{"user_id": "u-carla"}, {"user_id": "u-dora"}]}
        assert (await client.put("/csms", json=roster, headers=ADMIN)).status_code == 200
        try:
            yield life
        finally:
            await life.events.stop()


async def test_a_won_deal_s_term_tier_and_account_manager(
    life: Life, make_deal: Callable[..., DealWonV1]
) -> None:
    base = make_deal(value=Money(amount=300000.0))
    start = base.won_at
    term = ContractTerm(
        start=start, months=24, renewal_date=add_months(start, 24), value=Money(amount=300000.0)
    )
    account = await life.win(DealWonV2(**base.model_dump(), term=term))
    assert account["term"]["months"] == 24
    assert account["term"]["source"] == "deal"
    assert account["term"]["value"] == {"amount": 300000.0, "currency": "EUR"}
    assert account["tier"] == "strategic"
    assert account["needs_account_manager"] is True

    url = f"/accounts/{account['account_id']}"
    r = await life.client.put(
        f"{url}/account-manager", json={"user_id": "u-dora", "reason": "key"}, headers=ADMIN
    )
    assert r.status_code == 200, r.text
    assert r.json()["account_manager"] == "u-dora"
    assert r.json()["needs_account_manager"] is False
    assert [(a["role"], a["to_user"], a["by"]) for a in r.json()["assignments"]] == [
        ("account_manager", "u-dora", "u-admin")
    ]
    assert (await life.client.get(url, headers=DORA)).status_code == 200  # her account now
    r = await life.client.put(f"{url}/account-manager", json={"user_id": "u-nobody"}, headers=ADMIN)
    assert r.status_code == 422
    assert "user_id" in r.text
    r = await life.client.put(f"{url}/tier", json={"tier": "platinum"}, headers=ADMIN)
    assert r.status_code == 422
    assert r.json()["details"]["field"] == "tier"
    assert (await life.client.put(f"{url}/tier", json={"tier": "growth"}, headers=REP)).status_code == 403


async def test_renewal_list_and_a_recorded_renewal_is_emitted(
    life: Life, make_deal: Callable[..., DealWonV1]
) -> None:
    account = await life.win(make_deal(won_at=utcnow() - timedelta(days=300)))  # v1: default 12 months
    account_id = account["account_id"]
    assert account["term"]["source"] == "default"
    r = await life.client.get("/renewals", params={"window_days": 120}, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert account_id in [i["account_id"] for i in r.json()["items"]]
    r = await life.client.get("/renewals", params={"window_days": 30}, headers=ADMIN)
    assert account_id not in [i["account_id"] for i in r.json()["items"]]

    url = f"/accounts/{account_id}/renewals"
    r = await life.client.post(
        url, json={"outcome": "downgraded", "new_value": 90000, "new_term_months": 12}, headers=ADMIN
    )
    assert r.status_code == 422
    assert r.json()["details"]["field"] == "new_value"
    r = await life.client.post(url, json={"outcome": "churned", "churn_reason": "nope"}, headers=ADMIN)
    assert r.status_code == 422
    assert "churn_reason" in r.text
    r = await life.client.post(
        url, json={"outcome": "downgraded", "new_value": "40000.50", "new_term_months": 12}, headers=ADMIN
    )
    assert r.status_code == 201, r.text
    assert r.json()["new_term"]["value"]["amount"] == 40000.5
    renewal_id = r.json()["renewal_id"]

    def found(_: list[Any]) -> Any:
        return next(
            (
                e
                for e in life.events.envelopes("account.renewal_recorded")
                if e.payload["renewal_id"] == renewal_id
            ),
            None,
        )

    event = await life.events.wait_for(found, what="account.renewal_recorded")
    assert event.payload["outcome"] == "downgraded"
    assert event.payload["previous_value"]["amount"] == 54000.0
    assert event.payload["new_term"]["value"]["amount"] == 40000.5
    assert event.correlation_id == "j-1"
    r = await life.client.get(url, headers=ADMIN)
    assert [x["renewal_id"] for x in r.json()["items"]] == [renewal_id]


async def test_a_renewal_at_risk_shows_weeks_before_in_the_list_and_the_warnings(
    life: Life, make_deal: Callable[..., DealWonV1]
) -> None:
    """Runs last in this module: it moves the desk's clock ten days on."""
    account = await life.win(make_deal(won_at=utcnow() - timedelta(days=300)))  # due in about 65 days
    account_id = account["account_id"]
    flagged = await life.client.post(
        f"/accounts/{account_id}/commitments/c-sso/flag",
        json={"reason": "Azure AD SSO is not in the product"},
        headers=ADMIN,
    )
    assert flagged.status_code in (200, 201), flagged.text

    async def line() -> dict[str, Any]:
        r = await life.client.get("/renewals", params={"window_days": 120}, headers=ADMIN)
        assert r.status_code == 200, r.text
        return dict(next(i for i in r.json()["items"] if i["account_id"] == account_id))

    async def warning() -> dict[str, Any] | None:
        r = await life.client.get("/churn-warnings", headers=ADMIN)
        return next((w for w in r.json()["items"] if w["account_id"] == account_id), None)

    early = await line()
    assert early["days_left"] in (64, 65)
    assert (early["at_risk"], early["risk_reasons"]) == (False, [])
    assert await warning() is None, "an open flag alone, with the renewal 64 days away, is no warning"

    life.clock.advance(days=10)  # 54 days before the renewal: within the 60-day window
    assert (await life.client.post("/health/recompute", headers=ADMIN)).status_code == 200
    soon = await line()
    days = early["days_left"] - 10
    assert (soon["days_left"], soon["at_risk"]) == (days, True)
    assert "open_flags" in soon["risk_reasons"]  # (and low_health once its check-in is overdue)
    warned = await warning()
    assert warned is not None
    assert "renewal_at_risk" in warned["signals"]
    detail = next(d for d in warned["signal_details"] if d.startswith(f"renewal due in {days} days with"))
    assert detail.endswith(", ".join(soon["risk_reasons"]))

    rules = (await life.client.get("/health/rules", headers=ADMIN)).json()["rules"]
    bad = await life.client.put("/health/rules", json={**rules, "renewal_at_risk_days": 400}, headers=ADMIN)
    assert bad.status_code == 422
    assert "renewal_at_risk_days" in bad.text
