"""Won deals that the service desk's consumer stores in ONE transaction (group commit) name,
in the audit log, the deal that caused each change (the account, its onboarding and
commitments), not ``system:service-desk``. On the real broker and mongod: the deals are
produced as one record batch, so the running desk fetches and stores them together.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from crm_contracts import envelope_for, topics, utcnow
from crm_contracts.events.sales import DealWonV1
from crm_platform.settings import ServiceSettings
from crm_platform.testing import (
    eventually,
    histories_name_their_events,
    named_by_events_only,
    produce_together,
    running_app,
    start_group_at_end,
    token_for,
    transaction_of,
)
from fastapi import FastAPI
from service_desk import store as repo
from service_desk.main import create_app

pytestmark = pytest.mark.integration
ADMIN = {"Authorization": f"Bearer {token_for(['admin'], 'ada.admin', user_id='ada.admin')}"}


@pytest.fixture(scope="module")
async def desk(desk_settings: Callable[..., ServiceSettings], kafka_bootstrap: str) -> AsyncIterator[Any]:
    settings = desk_settings()
    await start_group_at_end(kafka_bootstrap, settings.group_id, [topics.DEAL_WON])
    app: FastAPI = create_app(settings)
    async with running_app(app) as client:
        csms = {"csms": [{"user_id": u, "active": True} for u in ("carla.csm", "dora.csm")]}
        r = await client.put("/csms", json=csms, headers=ADMIN)
        assert r.status_code == 200, r.text
        yield app, client


async def test_each_account_of_a_grouped_batch_of_won_deals_names_its_own_deal(
    desk: Any, make_deal: Callable[..., DealWonV1], kafka_bootstrap: str
) -> None:
    app, client = desk
    since = utcnow()
    deals = [make_deal() for _ in range(5)]
    envs = [envelope_for(d, source="sales", correlation_id=f"journey-{d.deal_id}") for d in deals]
    await produce_together(kafka_bootstrap, topics.DEAL_WON, envs)

    async def accounts() -> list[Any] | None:
        found = []
        for deal in deals:
            r = await client.get("/accounts", params={"deal_id": deal.deal_id}, headers=ADMIN)
            assert r.status_code == 200, r.text
            found += r.json()["items"]
        return found if len(found) == len(deals) else None

    stored = await eventually(accounts, what="the batch's accounts")
    db = app.state.runtime.db
    causes = {a["account_id"]: env for a, env in zip(stored, envs, strict=True)}
    histories = await histories_name_their_events(db, repo.ACCOUNTS, causes, since=since)
    [transaction] = {transaction_of(h[-1]) for h in histories.values()}
    written = await named_by_events_only(db, transaction)
    assert {e["actor"]["event_id"] for e in written} == {str(e.event_id) for e in envs}

    account = stored[3]
    r = await client.get(f"/accounts/{account['account_id']}/history", headers=ADMIN)
    assert r.status_code == 200, r.text
    [shown] = r.json()["items"]
    assert (shown["actor"]["event_id"], shown["correlation_id"]) == (
        str(envs[3].event_id),
        f"journey-{deals[3].deal_id}",
    )
