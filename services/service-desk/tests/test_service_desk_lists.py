"""GET /accounts and GET /tickets (issue 9): text search, filters, sort and cursor pages, each
query on an index (``explain`` on exactly the cursor the route reads, for every combination),
and their streamed CSV exports, on the real broker and mongod."""

from __future__ import annotations

import csv
import io
import itertools
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from crm_contracts import envelope_for, topics
from crm_contracts.events.sales import DealWonV1
from crm_platform.settings import ServiceSettings
from crm_platform.testing import eventually, produce_envelope, running_app, start_group_at_end, token_for
from service_desk import store
from service_desk.main import create_app

pytestmark = pytest.mark.integration

ADMIN = {"Authorization": f"Bearer {token_for(['admin'], 'ada.admin', user_id='ada.admin')}"}
REP = {"Authorization": f"Bearer {token_for(['service_rep'], 'rita.rep', user_id='rita.rep')}"}
CSM = "carla.csm"


def csm(user_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_for(['customer_success_manager'], user_id, user_id=user_id)}"}


@pytest.fixture(scope="module")
async def client(
    desk_settings: Callable[..., ServiceSettings], kafka_bootstrap: str
) -> AsyncIterator[httpx.AsyncClient]:
    settings = desk_settings()
    await start_group_at_end(kafka_bootstrap, settings.group_id, [topics.DEAL_WON])
    app = create_app(settings)
    async with running_app(app) as c:
        r = await c.put("/csms", json={"csms": [{"user_id": CSM, "active": True}]}, headers=ADMIN)
        assert r.status_code == 200, r.text
        c.app = app  # type: ignore[attr-defined]
        yield c


async def _accounts(
    client: httpx.AsyncClient, bootstrap: str, make_deal: Callable[..., DealWonV1], names: list[str]
) -> list[dict[str, Any]]:
    deals = [make_deal(account_name=n) for n in names]
    for deal in deals:  # one after the other: created_at follows the list's order
        env = envelope_for(deal, source="sales", correlation_id=f"journey-{deal.deal_id}")
        await produce_envelope(bootstrap, topics.DEAL_WON, env)

        async def landed(deal_id: str = deal.deal_id) -> bool:
            r = await client.get("/accounts", params={"deal_id": deal_id}, headers=ADMIN)
            return bool(r.json()["items"])

        await eventually(landed, what=f"the account of {deal.deal_id}")
    r = await client.get("/accounts", params={"q": names[0].split()[-1], "limit": 500}, headers=ADMIN)
    return list(r.json()["items"])


async def _pages(
    client: httpx.AsyncClient, path: str, params: dict[str, Any], headers: dict[str, str]
) -> list[Any]:
    items: list[Any] = []
    cursor: str | None = None
    while True:
        r = await client.get(path, params={**params, "limit": 2, **({"cursor": cursor} if cursor else {})},
                             headers=headers)  # fmt: skip
        assert r.status_code == 200, r.text
        items += r.json()["items"]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return items


async def test_accounts_and_tickets_search_sort_page_and_export(
    client: httpx.AsyncClient, kafka_bootstrap: str, make_deal: Callable[..., DealWonV1]
) -> None:
    tag = uuid.uuid4().hex[:8]
    names = [f"Zeta {tag}", f"Alpha {tag}", f"Mid {tag}"]
    await _accounts(client, kafka_bootstrap, make_deal, names)
    by_name = await _pages(client, "/accounts", {"q": tag, "sort": "name"}, REP)
    assert [a["name"] for a in by_name] == sorted(names)
    newest = await _pages(client, "/accounts", {"q": tag}, csm(CSM))
    assert [a["name"] for a in newest] == names[::-1]
    assert await _pages(client, "/accounts", {"q": tag}, csm("other.csm")) == []
    r = await client.get("/accounts", params={"cursor": "nope"}, headers=REP)
    assert r.status_code == 422, r.text
    assert r.json()["details"]["field"] == "query.cursor"
    r = await client.get("/accounts/export", params={"q": tag, "sort": "name"}, headers=REP)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert [x["name"] for x in csv.DictReader(io.StringIO(r.text))] == sorted(names)

    account_id = by_name[0]["account_id"]
    for n, priority in enumerate(("low", "urgent", "normal")):
        body = {
            "account_id": account_id,
            "subject": f"=Broken {tag} {n}",
            "request": "help",
            "priority": priority,
        }
        r = await client.post("/tickets", json=body, headers=REP)
        assert r.status_code == 201, r.text
    tickets = await _pages(client, "/tickets", {"q": f"broken {tag}", "sort": "oldest"}, REP)
    assert [t["subject"] for t in tickets] == [f"=Broken {tag} {n}" for n in range(3)]
    urgent = await _pages(client, "/tickets", {"q": tag, "priority": "urgent"}, csm(CSM))
    assert [t["subject"] for t in urgent] == [f"=Broken {tag} 1"]
    due_first = await _pages(client, "/tickets", {"account_id": account_id, "sort": "due"}, REP)
    assert due_first[0]["subject"] == f"=Broken {tag} 1"  # urgent: resolution due soonest
    assert await _pages(client, "/tickets", {"q": tag}, csm("other.csm")) == []
    r = await client.get("/tickets/export", params={"q": tag, "sort": "oldest"}, headers=REP)
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [x["subject"] for x in rows] == [f"'=Broken {tag} {n}" for n in range(3)]  # never a formula
    assert rows[1]["priority"] == "urgent"


ACCOUNT_QUERIES = [
    store.AccountQuery(*values)
    for values in itertools.product((None, CSM), (None, "in_progress"), (None, "deal-1"), (None, "active"),
                                    (None, "gold"), (None, "acme"), sorted(store.ACCOUNT_SORTS))
]  # fmt: skip
TICKET_QUERIES = [
    store.TicketQuery(*values)
    for values in itertools.product((None, "acct-1"), (None, "open"), (None, "urgent"), (None, "rita.rep"),
                                    (None, CSM), (None, "broken"), sorted(store.TICKET_SORTS))
]  # fmt: skip


async def test_every_listed_account_and_ticket_query_uses_an_index(
    client: httpx.AsyncClient, kafka_bootstrap: str, make_deal: Callable[..., DealWonV1]
) -> None:
    (account,) = await _accounts(client, kafka_bootstrap, make_deal, [f"Idx {uuid.uuid4().hex[:8]}"])
    body = {"account_id": account["account_id"], "subject": "Idx", "request": "r"}
    assert (await client.post("/tickets", json=body, headers=REP)).status_code == 201
    db = client.app.state.runtime.db  # type: ignore[attr-defined]
    account_doc = await db[store.ACCOUNTS].find_one({})
    ticket_doc = await db[store.TICKETS].find_one({})
    for query in ACCOUNT_QUERIES:
        for cursor in (None, store.ACCOUNT_SORTS[query.sort].cursor_of(account_doc)):
            plan = (await store.find_accounts(db, query, cursor).limit(101).explain())["queryPlanner"]
            assert "COLLSCAN" not in str(plan["winningPlan"]), (query, cursor, plan["winningPlan"])
    for tq in TICKET_QUERIES:
        for cursor in (None, store.TICKET_SORTS[tq.sort].cursor_of(ticket_doc)):
            plan = (await (await store.find_tickets(db, tq, cursor)).limit(101).explain())["queryPlanner"]
            assert "COLLSCAN" not in str(plan["winningPlan"]), (tq, cursor, plan["winningPlan"])
