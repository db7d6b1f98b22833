"""Sales creates accounts, contacts and opportunities itself (referrals, outbound), on the real
broker and mongod (issue 9): the events analytics learns them by, the won deal's handoff to
customer success, who may create what, bad input naming the field, and the lists (search,
filters, sort, cursor pages on an index, streamed CSV export)."""

from __future__ import annotations

import csv
import io
import itertools
import uuid
from typing import Any, TypeAlias

import pytest
from crm_contracts import Envelope
from crm_contracts.topics import DEAL_WON, SALES_EVENTS
from crm_platform.testing import TopicReader, opened_payload
from sales import store

pytestmark = pytest.mark.integration
Sales: TypeAlias = Any  # conftest.Sales

PRODUCTS = [{"sku": "CRM", "name": "CRM seat", "quantity": 2, "unit_price": 500.0}]


async def _post(sales: Sales, path: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    r = await sales.client.post(path, json=body, headers=headers)
    assert r.status_code == 201, r.text
    return dict(r.json())


def _refused(r: Any, status: int, field: str | None = None) -> dict[str, Any]:
    """The answer is ``status`` and (``field`` given) names the field it refuses."""
    assert r.status_code == status, r.text
    details: dict[str, Any] = r.json().get("details") or {}
    if field is not None:
        assert details.get("field") == field, r.text
    return details


def _mine(reader: TopicReader, event_type: str, key: str) -> list[Envelope]:
    return [e for e in reader.envelopes(event_type) if e.partition_key == key]


async def test_a_referral_becomes_a_won_deal_handed_to_customer_success(
    sales: Sales, kafka_bootstrap: str
) -> None:
    rep, tag = sales.uid("rhea"), uuid.uuid4().hex[:8]
    reader = await TopicReader(kafka_bootstrap, SALES_EVENTS, DEAL_WON).start()
    try:
        account = await _post(
            sales, "/accounts", {"name": f" Referral  Works {tag} ", "source": "referral"}, sales.rep(rep)
        )
        assert (account["name"], account["owner"], account["source"]) == (
            f"Referral Works {tag}",
            rep,
            "referral",
        )
        body = {"email": f"Grace.{tag}@Example.com", "name": "Grace Hopper", "source": "referral",
                "account_id": account["id"], "role": "CTO"}  # fmt: skip
        contact = await _post(sales, "/contacts", body, sales.rep(rep))
        assert contact["email"] == f"grace.{tag}@example.com"
        opp_body = {"account_id": account["id"], "source": "referral", "contact_ids": [contact["id"]]}
        opp = await _post(sales, "/opportunities", opp_body, sales.rep(rep))
        assert (opp["origin"], opp["direct_source"], opp["owner"]) == ("direct", "referral", rep)
        assert (opp["account_name"], opp["account_id"], opp["stage"]) == (
            account["name"],
            account["id"],
            "qualification",
        )
        assert [c["email"] for c in opp["contacts"]] == [contact["email"]]

        def created(_: list[Any]) -> tuple[Envelope, Envelope, Envelope] | None:
            a = _mine(reader, "sales.account_created", account["id"])
            c = _mine(reader, "sales.contact_created", contact["id"])
            o = _mine(reader, "opportunity.created", opp["id"])
            return (a[0], c[0], o[0]) if a and c and o else None

        a, c, o = await reader.wait_for(created, what="the direct records' events for analytics")
        assert a.payload == {"account_id": account["id"], "name": account["name"], "owner": rep,
                             "source": "referral", "industry": None, "custom": {}}  # fmt: skip
        assert a.schema_version == 2, "v1 plus the (here empty) extension map"
        assert c.payload == {
            "contact_id": contact["id"],
            "account_id": account["id"],
            "owner": rep,
            "source": "referral",
        }
        assert "Grace" not in c.to_bytes().decode()
        assert tag not in c.to_bytes().decode()
        assert (o.schema_version, o.payload["origin"], o.payload["source"]) == (3, "direct", "referral")
        assert o.payload["account_id"] == account["id"]

        fields = {"amount": 1000, "products": PRODUCTS, "commitments": []}
        won = await sales.move(opp["id"], "won", rep, fields=fields)
        assert won.status_code == 200, won.text

        def deal(_: list[Any]) -> Envelope | None:
            return next(iter(_mine(reader, "deal.won", opp["id"])), None)

        handoff = await reader.wait_for(deal, what="deal.won of the direct opportunity")
        assert handoff.payload["account_name"] == account["name"]
        assert handoff.payload["lead_id"] is None
        opened = await opened_payload(sales.runtime.db, handoff)  # sealed on the wire (issue 9)
        assert [x["email"] for x in opened["contacts"]] == [contact["email"]]
        assert handoff.correlation_id == o.correlation_id == opp["id"]
    finally:
        await reader.stop()


async def test_who_may_create_and_bad_input_names_the_field(sales: Sales) -> None:
    rep, other, tag = sales.uid("ria"), sales.uid("ozzy"), uuid.uuid4().hex[:8]
    await sales.activate(other)
    # A rep creates in their own book only; a manager may name an active rep.
    r = await sales.client.post("/accounts", json={"name": f"A {tag}", "source": "outbound", "owner": other},
                                headers=sales.rep(rep))  # fmt: skip
    _refused(r, 403, "body.owner")
    r = await sales.client.post("/accounts", json={"name": f"A {tag}", "source": "outbound",
                                "owner": sales.uid("ghost")}, headers=sales.manager())  # fmt: skip
    _refused(r, 422, "body.owner")
    account = await _post(sales, "/accounts", {"name": f"A {tag}", "source": "outbound", "owner": other},
                          sales.manager())  # fmt: skip
    assert account["owner"] == other
    # One account per name (case and spaces aside), one contact per email.
    r = await sales.client.post("/accounts", json={"name": f"a  {tag.upper()}", "source": "event"},
                                headers=sales.rep(other))  # fmt: skip
    assert _refused(r, 409, "body.name")["account_id"] == account["id"]
    contact = {"email": f"x{tag}@example.com", "name": "X", "source": "outbound"}
    await _post(sales, "/contacts", contact, sales.rep(other))
    r = await sales.client.post("/contacts", json={**contact, "email": contact["email"].upper()},
                                headers=sales.rep(rep))  # fmt: skip
    _refused(r, 409, "body.email")
    # Bad input: the field is named.
    for path, body, field in (
        ("/accounts", {"name": "x"}, "source"),
        ("/accounts", {"name": "x", "source": "cold-call"}, "source"),
        ("/contacts", {"email": "not-an-email", "name": "x", "source": "other"}, "email"),
        ("/opportunities", {"source": "referral"}, "account_id"),
    ):
        r = await sales.client.post(path, json=body, headers=sales.rep(rep))
        _refused(r, 422)
        assert field in r.text, (path, r.text)
    r = await sales.client.post("/opportunities", json={"account_id": "nope", "source": "referral"},
                                headers=sales.rep(rep))  # fmt: skip
    _refused(r, 404, "body.account_id")
    # Another rep's account is not theirs to sell on or read.
    r = await sales.client.post("/opportunities", json={"account_id": account["id"], "source": "referral"},
                                headers=sales.rep(rep))  # fmt: skip
    assert r.status_code == 403, r.text
    assert (await sales.client.get(f"/accounts/{account['id']}", headers=sales.rep(rep))).status_code == 403
    r = await sales.client.post("/opportunities", json={"account_id": account["id"], "source": "referral",
                                "contact_ids": ["missing"]}, headers=sales.rep(other))  # fmt: skip
    _refused(r, 404, "body.contact_ids")


async def _pages(
    sales: Sales, path: str, params: dict[str, Any], headers: dict[str, str]
) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query = {**params, "limit": 2, **({"cursor": cursor} if cursor else {})}
        r = await sales.client.get(path, params=query, headers=headers)
        assert r.status_code == 200, r.text
        items += r.json()["items"]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return items


async def test_lists_search_sort_page_and_export(sales: Sales) -> None:
    rep, tag = sales.uid("rory"), uuid.uuid4().hex[:8]
    names = [f"Zeta {tag}", f"Alpha {tag}", f"Mid {tag}"]
    accounts = [await _post(sales, "/accounts", {"name": n, "source": "outbound", "industry": "Rail"},
                            sales.rep(rep)) for n in names]  # fmt: skip
    for n, a in enumerate(accounts):
        body = {
            "email": f"p{n}.{tag}@example.com",
            "name": f"=Person {n}",
            "source": "outbound",
            "account_id": a["id"],
        }
        await _post(sales, "/contacts", body, sales.rep(rep))
    by_name = await _pages(sales, "/accounts", {"q": tag, "sort": "name"}, sales.rep(rep))
    assert [a["name"] for a in by_name] == sorted(names)
    newest = await _pages(sales, "/accounts", {"q": tag}, sales.manager())
    assert [a["name"] for a in newest] == names[::-1]
    assert await _pages(sales, "/accounts", {"q": tag}, sales.rep(sales.uid("other"))) == []
    people = await _pages(sales, "/contacts", {"account_id": accounts[1]["id"]}, sales.rep(rep))
    assert [p["email"] for p in people] == [f"p1.{tag}@example.com"]
    r = await sales.client.get("/accounts", params={"cursor": "garbage"}, headers=sales.rep(rep))
    assert r.status_code == 422
    assert "cursor" in r.text
    r = await sales.client.get("/contacts/export", params={"q": tag, "sort": "email"}, headers=sales.rep(rep))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [x["email"] for x in rows] == [f"p{n}.{tag}@example.com" for n in range(3)]
    assert rows[0]["name"] == "'=Person 0"  # a formula is never exported as one
    r = await sales.client.get("/accounts/export", params={"q": tag, "sort": "name"}, headers=sales.rep(rep))
    assert [x["name"] for x in csv.DictReader(io.StringIO(r.text))] == sorted(names)


BOOK_QUERIES = [
    store.BookQuery(*values)
    for values in itertools.product((None, "rep-1"), (None, "outbound"), (None, "acct-1"), (None, "engines"),
                                    ("newest", "oldest", "updated", "name"))
]  # fmt: skip


async def test_every_listed_account_and_contact_query_uses_an_index(sales: Sales) -> None:
    tag = uuid.uuid4().hex[:8]
    account = await _post(sales, "/accounts", {"name": f"Idx {tag}", "source": "other"}, sales.manager())
    await _post(sales, "/contacts", {"email": f"i{tag}@example.com", "name": "I", "source": "other",
                                     "account_id": account["id"]}, sales.manager())  # fmt: skip
    db = sales.runtime.store.db
    for find, sorts, col in (
        (store.find_accounts, store.ACCOUNT_SORTS, store.ACCOUNTS),
        (store.find_contacts, store.CONTACT_SORTS, store.CONTACTS),
    ):
        doc = await db[col].find_one({})
        for query in BOOK_QUERIES:
            if find is store.find_accounts and query.account_id is not None:
                continue  # accounts are not filtered by account
            for page_cursor in (None, sorts[query.sort].cursor_of(doc)):
                plan = (await find(db, query, page_cursor).limit(51).explain())["queryPlanner"]["winningPlan"]
                assert "COLLSCAN" not in str(plan), (col, query, page_cursor, plan)
