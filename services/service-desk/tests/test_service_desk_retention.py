"""Retention at the service desk (issue 9) on the real mongod: a resolved ticket past its
configured period loses what the customer wrote (request, result, notes) and keeps its
timings and outcome; an open one is never expired; each change is audited."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from crm_contracts import envelope_for, topics, utcnow
from crm_contracts.events.sales import DealWonV1
from crm_platform.audit import AUDIT_LOG
from crm_platform.retention import enforce
from crm_platform.settings import ServiceSettings
from crm_platform.testing import eventually, produce_envelope, running_app, start_group_at_end, token_for
from service_desk import store
from service_desk.main import create_app

pytestmark = pytest.mark.integration
REP = {"Authorization": f"Bearer {token_for(['service_rep'], 'rita.rep', user_id='rita.rep')}"}


@pytest.fixture(scope="module")
async def client(
    desk_settings: Callable[..., ServiceSettings], kafka_bootstrap: str
) -> AsyncIterator[httpx.AsyncClient]:
    settings = desk_settings()
    await start_group_at_end(kafka_bootstrap, settings.group_id, [topics.DEAL_WON])
    app = create_app(settings)
    async with running_app(app) as c:
        c.app = app  # type: ignore[attr-defined]
        yield c


async def test_a_resolved_ticket_past_its_period_is_anonymised(
    client: httpx.AsyncClient, kafka_bootstrap: str, make_deal: Callable[..., DealWonV1]
) -> None:
    deal = make_deal()
    await produce_envelope(
        kafka_bootstrap, topics.DEAL_WON, envelope_for(deal, source="sales", correlation_id="j")
    )

    async def account() -> Any:
        items = (await client.get("/accounts", params={"deal_id": deal.deal_id}, headers=REP)).json()["items"]
        return items[0] if items else None

    account_id = (await eventually(account, what="the deal's account"))["account_id"]
    ids = []
    for subject in ("resolved", "open"):
        body = {"account_id": account_id, "subject": subject, "request": "my password is hunter2"}
        r = await client.post("/tickets", json=body, headers=REP)
        assert r.status_code == 201, r.text
        ids.append(r.json()["ticket_id"])
    r = await client.post(f"/tickets/{ids[0]}/resolve", json={"result": "reset it for Ada"}, headers=REP)
    assert r.status_code == 200, r.text
    db = client.app.state.runtime.db  # type: ignore[attr-defined]
    aged = utcnow() - timedelta(days=400)
    await db[store.TICKETS].update_many(
        {"_id": {"$in": ids}}, {"$set": {"resolved_at": aged, "opened_at": aged, "custom": {"caller": "Ada"}}}
    )
    done = await enforce(client.app.state.runtime.store, store.RETENTION_RULES, {"ticket": 365})  # type: ignore[attr-defined]
    assert done == {"ticket": 1}
    resolved = (await client.get(f"/tickets/{ids[0]}", headers=REP)).json()
    assert (resolved["request"], resolved["result"]) == ("[anonymised]", "[anonymised]")
    assert resolved["custom"] == {}, "custom values may be about the person: cleared"
    assert (resolved["status"], resolved["subject"]) == ("resolved", "resolved")
    still = (await client.get(f"/tickets/{ids[1]}", headers=REP)).json()
    assert still["request"] == "my password is hunter2", "an open ticket is never expired"
    assert still["custom"] == {"caller": "Ada"}
    entry = await db[AUDIT_LOG].find_one({"record.id": ids[0], "operation": "RETENTION ticket"})
    assert entry is not None
    assert entry["actor"]["user_id"] == "system:service-desk"
