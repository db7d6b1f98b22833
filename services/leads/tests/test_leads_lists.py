"""GET /leads: text search, filters, sort and cursor paging, each query on an index (issue 9).

The explain test runs MongoDB's ``explain`` on exactly the cursor the route reads
(``store.find_leads``) for every combination of filter, search, order and page, and fails on
a collection scan.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from typing import Any, TypeAlias

import bson
import pytest
from crm_platform.testing import auth_headers, eventually
from leads import store

pytestmark = pytest.mark.integration
Leads: TypeAlias = Any  # conftest.Leads

MARKETING = auth_headers(["marketing"], "mia")


async def _pages(leads: Leads, params: dict[str, Any]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query = {**params, "limit": 2, **({"cursor": cursor} if cursor else {})}
        r = await leads.client.get("/leads", params=query, headers=MARKETING)
        assert r.status_code == 200, r.text
        items += r.json()["items"]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return items


async def test_search_sort_and_page_through_leads(leads: Leads) -> None:
    tag = uuid.uuid4().hex[:8]
    names = ["Zoe Quist", "Ada Quist", "Mo Quist", "Bo Other"]
    for name in names:
        await leads.capture(leads.unique_email(tag), name=name, company=f"Firm{tag}")
    found = await _pages(leads, {"q": f"quist firm{tag}", "sort": "name"})
    assert [x["name"] for x in found] == ["Ada Quist", "Mo Quist", "Zoe Quist"]
    everyone = await _pages(leads, {"q": f"Firm{tag}", "sort": "newest"})
    assert [x["name"] for x in everyone] == list(reversed(names))
    oldest = await _pages(leads, {"q": f"firm{tag}", "sort": "oldest"})
    assert [x["name"] for x in oldest] == names
    email = everyone[0]["email"]
    [one] = await _pages(leads, {"q": email.upper()})
    assert one["email"] == email


async def test_a_cursor_for_another_order_or_garbage_is_a_422(leads: Leads) -> None:
    await leads.capture()
    await leads.capture()
    r = await leads.client.get("/leads", params={"limit": 1, "sort": "score"}, headers=MARKETING)
    cursor = r.json()["next_cursor"]
    assert cursor
    for params in ({"cursor": cursor, "sort": "name"}, {"cursor": "garbage"}, {"sort": "shoe_size"}):
        r = await leads.client.get("/leads", params=params, headers=MARKETING)
        assert r.status_code == 422, (params, r.text)


QUERIES = [
    store.LeadQuery(status=status, channel=channel, q=q, sort=sort, rep=rep)
    for status, channel, q, sort, rep in itertools.product(
        (None, "new"),
        (None, "webinar"),
        (None, "ada", "ada@example.com"),
        sorted(store.LEAD_SORTS),
        (None, "rep-1"),  # a sales rep's own leads (domain.access)
    )
]


async def test_every_listed_query_uses_an_index(leads: Leads) -> None:
    for _ in range(3):
        await leads.capture()
    db = leads.runtime.store.db
    for query in QUERIES:
        first = await store.find_leads(db, query).limit(3).to_list()
        last = first[-1] if first else await db[store.LEADS].find_one({})
        cursor = store.LEAD_SORTS[query.sort].cursor_of(last)
        for page_cursor in (None, cursor):
            plan = (await store.find_leads(db, query, page_cursor).limit(51).explain())["queryPlanner"]
            assert "COLLSCAN" not in str(plan["winningPlan"]), (query, page_cursor, plan["winningPlan"])


async def test_filter_by_campaign_and_score_range_and_page_in_order(leads: Leads) -> None:
    tag = uuid.uuid4().hex[:8]
    db = leads.runtime.store.db
    scores = {"Ann": 5.0, "Ben": 40.0, "Cy": 65.5, "Di": 90.0}
    for name, score in scores.items():
        lead = (await leads.capture(leads.unique_email(tag), name=name, campaign=f"spring-{tag}"))["lead"]
        await db[store.LEADS].update_one({"_id": lead["id"]}, {"$set": {"score": score}})
    await leads.capture(leads.unique_email(tag), name="Other", campaign=f"autumn-{tag}")
    campaign = f"spring-{tag}"
    found = await _pages(leads, {"campaign": campaign, "min_score": 40, "max_score": 70, "sort": "score"})
    assert [x["name"] for x in found] == ["Cy", "Ben"]
    found = await _pages(leads, {"campaign": campaign, "min_score": "65.5", "sort": "name"})
    assert [x["name"] for x in found] == ["Cy", "Di"]
    found = await _pages(leads, {"campaign": campaign, "max_score": 5, "min_score": ""})
    assert [x["name"] for x in found] == ["Ann"]
    assert len(await _pages(leads, {"campaign": campaign})) == 4
    rep = f"rep-{tag}"
    await db[store.LEADS].update_many(  # as the assignment's save writes them (store.lead_to_doc)
        {"campaign": campaign, "name": {"$in": ["Ben", "Di"]}},
        {"$set": {"assigned_rep": rep}, "$addToSet": {store.LIST_KEYS: store.rep_key(rep)}},
    )
    mine = await _pages(leads, {"owner": rep, "sort": "name"})
    assert [(x["name"], x["owner"]) for x in mine] == [("Ben", rep), ("Di", rep)]
    assert [x["name"] for x in await _pages(leads, {"owner": rep, "min_score": 50})] == ["Di"]
    for bad in ({"min_score": 50, "max_score": 10}, {"min_score": -1}, {"max_score": "x"}):
        r = await leads.client.get("/leads", params=bad, headers=MARKETING)
        assert r.status_code == 422, (bad, r.text)
    r = await leads.client.get("/leads", params={"min_score": 50, "max_score": 10}, headers=MARKETING)
    assert r.json()["details"]["field"] == "query.min_score", r.text


FILTERED = [
    store.LeadQuery(status=status, campaign=campaign, min_score=low, max_score=high, sort=sort, rep=rep)
    for status, campaign, (low, high), sort, rep in itertools.product(
        (None, "new"),
        (None, "q1"),
        ((None, None), (10.0, None), (None, 50.0), (10.0, 50.0)),
        sorted(store.LEAD_SORTS),
        (None, "user-rita"),
    )
]


async def test_every_campaign_and_score_query_uses_an_index(leads: Leads) -> None:
    for _ in range(3):
        await leads.capture()
    db = leads.runtime.store.db
    for query in FILTERED:
        first = await store.find_leads(db, query).limit(3).to_list()
        last = first[-1] if first else await db[store.LEADS].find_one({})
        cursor = store.LEAD_SORTS[query.sort].cursor_of(last)
        for page_cursor in (None, cursor):
            plan = (await store.find_leads(db, query, page_cursor).limit(51).explain())["queryPlanner"]
            assert "COLLSCAN" not in str(plan["winningPlan"]), (query, page_cursor, plan["winningPlan"])


def _index_names(stage: Any) -> set[str]:
    if isinstance(stage, dict):
        found = {stage["indexName"]} if "indexName" in stage else set()
        return found.union(*(_index_names(v) for v in stage.values()))
    return set().union(*(_index_names(v) for v in stage)) if isinstance(stage, list) else set()


async def _candidates(cursor: Any) -> set[str]:
    """The indexes of every plan the planner weighed for ``cursor`` (winner and rejected)."""
    plan = bson.decode((await cursor.explain())["queryPlanner"].raw)
    return _index_names([plan["winningPlan"], plan["rejectedPlans"]])


def _list_bounds(stage: Any) -> set[str]:
    """The ``LIST_KEYS`` intervals the index scans of a plan read (``'["rep:r", "rep:r"]'``)."""
    if isinstance(stage, dict):
        bounds = stage.get("indexBounds", {}).get(store.LIST_KEYS, [])
        return set(bounds).union(*(_list_bounds(v) for v in stage.values()))
    return set().union(*(_list_bounds(v) for v in stage)) if isinstance(stage, list) else set()


async def _weighed_lists(cursor: Any) -> set[str]:
    plan = bson.decode((await cursor.explain())["queryPlanner"].raw)
    return _list_bounds([plan["winningPlan"], plan["rejectedPlans"]])


async def test_a_reps_and_a_campaigns_queries_read_their_own_index_entries(leads: Leads) -> None:
    """A rep's leads are read through their rep's entries in the ``listed*`` index of the order
    (the status lists and a rep's lists share those indexes); a channel's and a campaign's
    through their entries in ``by_source`` (only leads with a campaign have one), weighed for
    every query on a channel or a campaign and no other (searches aside: an address reads the
    unique email index, words the text index)."""
    await leads.capture()
    db = leads.runtime.store.db
    for query in [q for q in QUERIES + FILTERED if not q.q]:
        spec = store.LEAD_SORTS[query.sort]
        name = "listed" if spec.field == "created_at" else f"listed_{spec.field}"
        cursor = store.find_leads(db, query).limit(51)
        plans, lists = await _candidates(cursor), await _weighed_lists(cursor)
        rep = f'["{store.rep_key(query.rep)}", "{store.rep_key(query.rep)}"]' if query.rep else None
        assert (rep in lists) == (query.rep is not None), (query, lists)
        assert name in plans or query.rep is None, (query, plans)
        sourced = query.campaign is not None or query.channel is not None
        assert ("by_source" in plans) == sourced, (query, plans)
    export = db[store.LEADS].find({store.LIST_KEYS: {"$all": ["rep:rep-1", "status:new"]}})
    assert "listed" in await _candidates(export.sort([("created_at", -1), ("_id", -1)]))


async def test_the_status_and_rep_indexes_are_retired_and_older_leads_get_their_lists(leads: Leads) -> None:
    """Start-up gives the leads an earlier version stored their ``LIST_KEYS`` (as
    ``lead_to_doc`` does) before it drops the indexes the ``listed*`` ones serve: mongod 6.0
    checks every index of ``leads`` for each lead a transaction updates (twice per handoff)."""
    tag = uuid.uuid4().hex[:8]
    db = leads.runtime.store.db
    old = [(await leads.capture(leads.unique_email(tag)))["lead"]["id"] for _ in range(2)]
    await db[store.LEADS].update_one({"_id": old[1]}, {"$set": {"assigned_rep": f"rep-{tag}"}})
    await db[store.LEADS].update_many({"_id": {"$in": old}}, {"$unset": {store.LIST_KEYS: ""}})
    await db[store.LEADS].create_index("updated_at", name="by_updated")
    await db[store.LEADS].create_index([("assigned_rep", 1), ("score", -1)], name="assigned_score")
    await store.ensure_indexes(db)
    await store.ensure_indexes(db)  # again: nothing left to drop, nothing to fill in
    names = {ix["name"] async for ix in await db[store.LEADS].list_indexes()}
    assert not names & set(store.RETIRED_INDEXES), names
    assert {"listed", "listed_updated_at", "listed_score", "listed_name"} <= names
    assert len(names - {"by_person_hash"}) == 9, names
    stored = {d["_id"]: d[store.LIST_KEYS] async for d in db[store.LEADS].find({"_id": {"$in": old}})}
    assert stored == {old[0]: ["status:new"], old[1]: ["status:new", f"rep:rep-{tag}"]}


def _stages(stage: Any) -> list[str]:
    if isinstance(stage, dict):
        own = [stage["stage"]] if "stage" in stage else []
        return own + [s for v in stage.values() for s in _stages(v)]
    return [s for v in stage for s in _stages(v)] if isinstance(stage, list) else []


async def test_the_orders_by_time_and_name_read_the_status_indexes_page_after_page(leads: Leads) -> None:
    """``newest``, ``oldest``, ``updated`` and ``name`` without a status filter read their
    ``listed*`` index every status at once (merged in order), so a lead enters three index
    entries fewer (no ``newest``, ``by_updated_at``, ``by_name``); a later page reads about a
    page of index keys, not everything before it, and nothing is sorted in memory."""
    tag = uuid.uuid4().hex[:8]
    for n in range(40):
        await leads.capture(leads.unique_email(tag), name=f"Merged {n:02d}", campaign=None)
    db = leads.runtime.store.db
    names = {ix["name"] async for ix in await db[store.LEADS].list_indexes()}
    assert not names & {"newest", "by_updated_at", "by_name", "by_status", "by_status_name"}, names
    for sort in ("newest", "oldest", "updated", "name"):
        query = store.LeadQuery(sort=sort)
        first = await store.find_leads(db, query).limit(30).to_list()
        cursor = store.LEAD_SORTS[sort].cursor_of(first[-1])
        explained = await store.find_leads(db, query, cursor).limit(3).explain()
        plan, stats = (bson.decode(explained[k].raw) for k in ("queryPlanner", "executionStats"))
        assert "SORT" not in _stages(plan["winningPlan"]), (sort, plan["winningPlan"])
        assert stats["nReturned"] == 3
        assert stats["totalKeysExamined"] <= 3 + 2 * len(store.EVERY_STATUS["$in"]), (sort, stats)
    for sort in ("name", "updated"):  # paged two at a time: every lead once, in order
        spec = store.LEAD_SORTS[sort]
        every = [d["_id"] async for d in db[store.LEADS].find({}, {"_id": 1}).sort(spec.spec)]
        assert [x["id"] for x in await _pages(leads, {"sort": sort})] == every


async def test_the_score_order_reads_the_status_indexes_deep_in_its_tie(leads: Leads) -> None:
    """``score`` without a status reads ``listed_score`` every status at once, as the time and
    name orders do, so its own index ``by_score`` is retired at start-up (mongod 6.0 checks
    every index of ``leads`` for each lead a transaction updates, twice per handoff). Most
    leads tie at 0: a page deep in the tie, with or without other filters, reads about a page
    of keys through ``listed_score`` alone (each status's scan starts at the cursor's ``_id``),
    nothing sorted in memory, and paging visits every lead once, in order."""
    tag = uuid.uuid4().hex[:8]
    db = leads.runtime.store.db
    await db[store.LEADS].create_index([("score", -1), ("_id", -1)], name="by_score")  # an earlier version's
    for n in range(40):
        await leads.capture(leads.unique_email(tag), name=f"Tied {n:02d}", source_channel=f"fair-{tag}")
    await store.ensure_indexes(db)
    names = {ix["name"] async for ix in await db[store.LEADS].list_indexes()}
    assert "by_score" not in names, names
    spec, statuses = store.LEAD_SORTS["score"], len(store.EVERY_STATUS["$in"])
    for extra in ({}, {"min_score": 0, "max_score": 50}):
        query = store.LeadQuery(sort="score", **extra)  # type: ignore[arg-type]
        first = await store.find_leads(db, query).limit(30).to_list()
        assert first[-1]["score"] == 0, first[-1]  # deep in the tie at 0
        explained = await store.find_leads(db, query, spec.cursor_of(first[-1])).limit(3).explain()
        plan, stats = (bson.decode(explained[k].raw) for k in ("queryPlanner", "executionStats"))
        assert "SORT" not in _stages(plan["winningPlan"]), (extra, plan["winningPlan"])
        assert _index_names(plan["winningPlan"]) == {"listed_score"}, (extra, plan["winningPlan"])
        assert stats["nReturned"] == 3
        # a key per lead returned, and one that ends each status's scan on each side of the cursor
        assert stats["totalKeysExamined"] <= 3 + 3 * statuses, (extra, stats)
    # With a filter another index serves (the channel's), the server weighs it against
    # ``listed_score`` branch by branch, as it weighed it against ``by_score``: any order, same pages.
    every = [d["_id"] async for d in db[store.LEADS].find({}, {"_id": 1}).sort(spec.spec)]
    assert [x["id"] for x in await _pages(leads, {"sort": "score"})] == every
    fair = {"origin_channel": f"fair-{tag}"}
    every = [d["_id"] async for d in db[store.LEADS].find(fair, {"_id": 1}).sort(spec.spec)]
    assert len(every) == 40
    assert [x["id"] for x in await _pages(leads, {"sort": "score", "channel": f"fair-{tag}"})] == every


async def test_a_channel_and_a_campaign_are_read_through_one_index(leads: Leads) -> None:
    """A lead's channel and campaign are its ``SOURCES``: ``by_source`` serves ?channel=,
    ?campaign= and both, and the two indexes it replaces (``by_channel``, ``in_campaign``) are
    retired at start-up after the leads an earlier version stored get their sources (mongod
    6.0 checks every index of ``leads`` for each lead a transaction updates, twice per
    handoff). A newest-first page reads its channel's or campaign's entries only, nothing sorted
    in memory; a corrected campaign moves the lead to the other campaign's list."""
    tag = uuid.uuid4().hex[:8]
    db = leads.runtime.store.db
    await db[store.LEADS].create_index(
        [("origin_channel", 1), ("created_at", -1), ("_id", -1)], name="by_channel"
    )
    ids = [
        (await leads.capture(leads.unique_email(tag), source_channel=f"expo-{tag}", campaign=campaign))[
            "lead"
        ]["id"]
        for campaign in (f"spring-{tag}", f"spring-{tag}", None, f"autumn-{tag}")
    ]
    await db[store.LEADS].update_many(
        {"_id": {"$in": ids[:2]}}, {"$unset": {store.SOURCES: ""}}
    )  # stored earlier
    await store.ensure_indexes(db)
    names = {ix["name"] async for ix in await db[store.LEADS].list_indexes()}
    assert "by_source" in names, names
    assert not names & {"by_channel", "in_campaign"}, names
    for params, expected in (
        ({"channel": f"expo-{tag}"}, ids),
        ({"campaign": f"spring-{tag}"}, ids[:2]),
        ({"channel": f"expo-{tag}", "campaign": f"autumn-{tag}"}, ids[3:]),
    ):
        assert sorted(x["id"] for x in await _pages(leads, params)) == sorted(expected), params
        query = store.LeadQuery(channel=params.get("channel"), campaign=params.get("campaign"), status="new")
        explained = await store.find_leads(db, query).limit(3).explain()
        plan, stats = (bson.decode(explained[k].raw) for k in ("queryPlanner", "executionStats"))
        assert _index_names(plan["winningPlan"]) == {"by_source"}, (params, plan["winningPlan"])
        assert "SORT" not in _stages(plan["winningPlan"]), (params, plan["winningPlan"])
        assert stats["totalKeysExamined"] <= len(expected) + 1, (params, stats)
    r = await leads.client.patch(f"/leads/{ids[0]}", json={"campaign": f"autumn-{tag}"}, headers=MARKETING)
    assert r.status_code == 200, r.text
    assert sorted(x["id"] for x in await _pages(leads, {"campaign": f"autumn-{tag}"})) == sorted(
        [ids[0], ids[3]]
    )
    history = (await leads.client.get(f"/leads/{ids[0]}/history", headers=MARKETING)).json()["items"]
    assert all(c["field"] != store.SOURCES for e in history for c in e.get("changes") or []), history


async def test_a_lead_an_earlier_replica_saves_during_a_rolling_update_is_back_in_its_lists(
    leads: Leads,
) -> None:
    """An earlier version's save unsets ``LIST_KEYS`` (its lead has no such field): the running
    service's job gives the lead its lists again within a round, finding such leads through the
    ``listed`` index, not by reading every lead."""
    tag = uuid.uuid4().hex[:8]
    db = leads.runtime.store.db
    lead = (await leads.capture(leads.unique_email(tag)))["lead"]["id"]
    await db[store.LEADS].update_one(
        {"_id": lead},
        {"$set": {"status": "nurturing", "assigned_rep": f"rep-{tag}"}, "$unset": {store.LIST_KEYS: ""}},
    )
    query = store.LeadQuery(status="nurturing", rep=f"rep-{tag}")
    assert await store.find_leads(db, query).to_list() == [], "out of its lists until filled"
    plan = (await db[store.LEADS].find({store.LIST_KEYS: {"$exists": False}}).explain())["queryPlanner"]
    assert "COLLSCAN" not in str(plan["winningPlan"]), plan["winningPlan"]
    job = asyncio.create_task(store.list_keys_job(db, every_seconds=0.05)())
    try:

        async def listed() -> list[Any] | None:
            return await store.find_leads(db, query).to_list() or None

        [found] = await eventually(listed, timeout=10, what="the lead back in its lists")
    finally:
        job.cancel()
    assert found[store.LIST_KEYS] == ["status:nurturing", f"rep:rep-{tag}"]
