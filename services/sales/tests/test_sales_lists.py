"""GET /opportunities and GET /inbox: text search, filters, sort and cursor paging, each query on an index
(issue 9). The explain test runs MongoDB's ``explain`` on exactly the cursor the route reads
(``store.find_opportunities``) for every combination and fails on a collection scan."""

from __future__ import annotations

import csv
import io
import itertools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias

import pytest
from bson import decode
from crm_platform.paging import page
from sales import store

pytestmark = pytest.mark.integration
Sales: TypeAlias = Any  # conftest.Sales


async def _pages(sales: Sales, params: dict[str, Any], headers: dict[str, str]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query = {**params, "limit": 2, **({"cursor": cursor} if cursor else {})}
        r = await sales.client.get("/opportunities", params=query, headers=headers)
        assert r.status_code == 200, r.text
        items += r.json()["items"]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return items


async def test_search_sort_by_amount_and_page_through_a_reps_book(sales: Sales) -> None:
    tag, rep = uuid.uuid4().hex[:8], sales.uid("rex")
    amounts = [300, None, 100, 200]
    for n, amount in enumerate(amounts):
        opp = await sales.opportunity_for(rep, company=f"Engines{tag} {n}")
        if amount is not None:
            r = await sales.client.patch(
                f"/opportunities/{opp['id']}", json={"fields": {"amount": amount}}, headers=sales.rep(rep)
            )
            assert r.status_code == 200, r.text
    by_amount = await _pages(sales, {"q": f"engines{tag}", "sort": "amount"}, sales.rep(rep))
    assert [o["account_name"] for o in by_amount] == [f"Engines{tag} {n}" for n in (0, 3, 2, 1)]
    newest = await _pages(sales, {"q": f"Engines{tag}"}, sales.manager())
    assert [o["account_name"] for o in newest] == [f"Engines{tag} {n}" for n in (3, 2, 1, 0)]
    assert await _pages(sales, {"q": f"engines{tag}"}, sales.rep(sales.uid("other"))) == []


QUERIES = [
    store.OpportunityQuery(*values)
    for values in itertools.product(
        (None, "rep-1"), (None, "proposal"), (None, "open"), (None, "lead"), (None, True), (None, "engines"),
        sorted(store.OPPORTUNITY_SORTS),
    )
]  # fmt: skip


async def test_every_listed_query_uses_an_index(sales: Sales) -> None:
    await sales.opportunity_for(sales.uid("rex"))
    db = sales.runtime.store.db
    any_opp = await db[store.OPPORTUNITIES].find_one({})
    for query in QUERIES:
        cursor = store.OPPORTUNITY_SORTS[query.sort].cursor_of(any_opp)
        for page_cursor in (None, cursor):
            plan = (await store.find_opportunities(db, query, page_cursor).limit(51).explain())[
                "queryPlanner"
            ]
            assert "COLLSCAN" not in str(plan["winningPlan"]), (query, page_cursor, plan["winningPlan"])


async def test_opportunities_export_streams_the_lists_selection_as_csv(sales: Sales) -> None:
    tag, rep = uuid.uuid4().hex[:8], sales.uid("rae")
    for n in range(3):
        await sales.opportunity_for(rep, company=f"=Export{tag} {n}")
    r = await sales.client.get("/opportunities/export", params={"q": f"export{tag}", "sort": "oldest"},
                               headers=sales.rep(rep))  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.headers["content-disposition"] == 'attachment; filename="opportunities.csv"'
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [x["account_name"] for x in rows] == [f"'=Export{tag} {n}" for n in range(3)]  # never a formula
    assert {x["owner"] for x in rows} == {rep}
    other = await sales.client.get("/opportunities/export", params={"q": f"export{tag}"},
                                   headers=sales.rep(sales.uid("other")))  # fmt: skip
    assert list(csv.DictReader(io.StringIO(other.text))) == []


async def _three_for(sales: Sales, rep: str, company: str) -> list[str]:
    """Three qualified leads whose inbox items ``rep`` owns; their lead ids in order."""
    leads = []
    for n in range(3):
        item, _ = await sales.qualify(company=f"{company} {n}")
        if item["owner"] != rep:
            await sales.assign(item["lead_id"], rep)
        leads.append(item["lead_id"])
    return leads


async def _every_page(sales: Sales, rep: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """``rep``'s GET /inbox with ``params``, every page followed by its cursor."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        page_params = {**params, **({"cursor": cursor} if cursor else {})}
        r = await sales.client.get("/inbox", params=page_params, headers=sales.rep(rep))
        assert r.status_code == 200, r.text
        items += r.json()["items"]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return items


async def test_the_inbox_searches_sorts_pages_and_exports(sales: Sales) -> None:
    tag, rep = uuid.uuid4().hex[:8], sales.uid("ivy")
    await sales.activate(rep)
    leads = await _three_for(sales, rep, f"Inbox{tag}")
    items = await _every_page(sales, rep, {"q": f"inbox{tag}", "sort": "oldest", "limit": 2})
    assert [i["lead_id"] for i in items] == leads
    r = await sales.client.get("/inbox", params={"q": f"inbox{tag}"}, headers=sales.rep(sales.uid("other")))
    assert r.json()["items"] == []
    r = await sales.client.get("/inbox/export", params={"q": f"inbox{tag}", "sort": "oldest"},
                               headers=sales.manager())  # fmt: skip
    assert r.status_code == 200, r.text
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [(x["lead_id"], x["owner"], x["status"]) for x in rows] == [
        (lead, rep, "pending") for lead in leads
    ]
    r = await sales.client.get("/inbox", params={"cursor": "x"}, headers=sales.rep(rep))
    assert r.status_code == 422, r.text


INBOX_QUERIES = [
    store.InboxQuery(*values)
    for values in itertools.product((None, "rep-1"), (None, "pending"), (None, True, False), (False, True),
                                    (None, "engines"), sorted(store.INBOX_SORTS))
]  # fmt: skip


async def test_every_listed_inbox_query_uses_an_index(sales: Sales) -> None:
    await sales.qualify()
    db = sales.runtime.store.db
    any_item = await db[store.INBOX].find_one({})
    now = datetime.now(UTC)
    for query in INBOX_QUERIES:
        for page_cursor in (None, store.INBOX_SORTS[query.sort].cursor_of(any_item)):
            found = store.find_inbox(db, query, now, page_cursor)
            if found is None:
                continue  # nothing can match: the route answers without a query
            plan = (await found.limit(51).explain())["queryPlanner"]["winningPlan"]
            assert "COLLSCAN" not in str(plan), (query, page_cursor, plan)


async def test_the_inbox_pages_every_status_in_each_order(sales: Sales) -> None:
    """A rep's inbox without a status: one index scan per status, merged, each page after its
    cursor (``store.on_status_index``); a pending and an accepted item in every order."""
    rep = sales.uid("ida")
    await sales.activate(rep)
    leads = await _three_for(sales, rep, "Paged")
    await sales.accept(leads[1], rep)
    for sort in store.INBOX_SORTS:
        items = await _every_page(sales, rep, {"sort": sort, "limit": 1})
        one_page = await sales.client.get("/inbox", params={"sort": sort}, headers=sales.rep(rep))
        assert [i["id"] for i in items] == [i["id"] for i in one_page.json()["items"]], sort
        assert sorted(i["lead_id"] for i in items) == sorted(leads), sort
        assert {i["status"] for i in items} == {"pending", "accepted"}, sort


async def test_an_inbox_item_enters_six_listing_indexes(sales: Sales) -> None:
    """(owner?, status, order) only: 15 indexes with the text index became 10 (the drain's mongod
    time per item); the retired ones, the score lists without the time of change among them, are
    dropped at start-up."""
    db = sales.runtime.store.db
    await db[store.INBOX].create_index([("status", 1), ("response_due_at", 1)], name="by_status_due")
    score_by_id = [("status", 1), ("handoff.score", -1), ("_id", -1)]
    await db[store.INBOX].create_index(score_by_id, name="list_status_handoff_score")
    await store.ensure_inbox_list_indexes(db)
    names = set(await db[store.INBOX].index_information())
    assert {n for n in names if n.startswith("list_")} == {
        f"list_{prefix}{field}"
        for prefix in ("status_", "owner_status_")
        for field in ("received_at", "response_due_at", "handoff_score_updated_at")
    }
    others = {n for n in names if not n.startswith("list_")}
    assert others == {"_id_", "by_lead", "search", "by_person_hash"}


async def test_the_score_order_ties_latest_changed_first_through_its_index(sales: Sales) -> None:
    """A tie of scores is read latest changed first: the score lists hold (score, updated_at, _id),
    so a drained item enters its tie at the end, as the time lists take it, not at its random id
    (the handoff's event id) anywhere in the tie. A rep's items in two statuses, ids in the
    opposite order of their times, paged two at a time: the latest first, each once, one ordered
    index scan per status merged (no blocking sort) for the first page."""
    db = sales.runtime.store.db
    rep, t0 = sales.uid("tie"), datetime(2026, 12, 7, tzinfo=UTC)
    docs = [
        {"_id": f"{rep}-{9 - i}", "owner": rep, "status": ("pending", "accepted")[i % 2],
         "handoff": {"score": 50.0}, "received_at": t0, "updated_at": t0 + timedelta(seconds=i)}
        for i in range(6)
    ]  # fmt: skip
    await db[store.INBOX].insert_many(docs)
    try:
        query, score = store.InboxQuery(owner=rep, sort="score"), store.INBOX_SORTS["score"]
        order, cursor = [], None
        while True:
            found = store.find_inbox(db, query, t0, cursor)
            if cursor is None:  # (a page after a cursor: the planner's choice on six items)
                plan = str(decode((await found.limit(3).explain())["queryPlanner"]["winningPlan"].raw))
                assert "status_handoff_score_updated_at'" in plan, plan  # a score list
                assert "'SORT'" not in plan, plan
            batch, cursor = page(await store.find_inbox(db, query, t0, cursor).limit(3).to_list(), 2, score)
            order += [d["_id"] for d in batch]
            if cursor is None:
                break
        assert order == [d["_id"] for d in reversed(docs)]
    finally:
        await db[store.INBOX].delete_many({"owner": rep})
