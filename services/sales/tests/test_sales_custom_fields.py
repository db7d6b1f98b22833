"""Custom fields on sales' accounts against the real mongod and broker (issue 9): the same
platform pieces as marketing's leads (``crm_platform.custom_fields``): an admin defines them,
``POST /accounts`` checks a value against them (422 naming the field), the values are stored,
listed with ``?cf=`` on the wildcard index (no collection scan), and carried in
``sales.account_created`` v2's extension map (text left out)."""

from __future__ import annotations

import csv
import io
import itertools
from typing import Any, TypeAlias

import pytest
from crm_contracts import Envelope
from crm_contracts.topics import SALES_EVENTS
from crm_platform.custom_fields import RecordType, filter_of
from crm_platform.custom_fields_api import COLLECTION, fieldset_from_doc
from crm_platform.testing import TopicReader
from sales import store

pytestmark = pytest.mark.integration
Sales: TypeAlias = Any  # conftest.Sales

FIELDS: list[dict[str, Any]] = [
    {"key": "segment", "label": "Segment", "type": "choice", "required": True, "choices": ["smb", "ent"]},
    {"key": "arr", "label": "ARR", "type": "money", "currency": "EUR", "minimum": 0},
    {"key": "note", "label": "Note", "type": "text"},
]


async def _define(sales: Sales) -> None:
    admin = sales.headers("admin", "root")
    r = await sales.client.put("/custom-fields/account", json={"fields": FIELDS}, headers=admin)
    assert r.status_code == 200, r.text


async def test_definitions_values_filters_and_the_event(sales: Sales, kafka_bootstrap: str) -> None:
    r = await sales.client.put("/custom-fields/account", json={"fields": FIELDS}, headers=sales.manager())
    assert r.status_code == 403, "admins define custom fields"
    await _define(sales)
    rep = sales.uid("rep")
    r = await sales.client.get("/custom-fields/account", headers=sales.rep(rep))
    assert [f["key"] for f in r.json()["fields"]] == ["segment", "arr", "note"]
    body = {"name": sales.uid("Acme"), "source": "referral"}
    r = await sales.client.post("/accounts", json=body, headers=sales.rep(rep))
    assert r.status_code == 422, r.text
    assert "body.custom.segment" in r.text, "a required custom field"
    r = await sales.client.post(
        "/accounts", json={**body, "custom": {"segment": "huge"}}, headers=sales.rep(rep)
    )
    assert r.status_code == 422, r.text
    assert "must be one of smb, ent" in r.text

    reader = await TopicReader(kafka_bootstrap, SALES_EVENTS).start()
    try:
        custom = {"segment": "ent", "arr": {"amount": "120000.00", "currency": "EUR"}, "note": "met at expo"}
        r = await sales.client.post("/accounts", json={**body, "custom": custom}, headers=sales.rep(rep))
        assert r.status_code == 201, r.text
        account = r.json()
        assert account["custom"] == custom

        def created(_: list[Any]) -> list[Envelope] | None:
            envs = [e for e in reader.envelopes("sales.account_created") if e.partition_key == account["id"]]
            return envs or None

        [env] = await reader.wait_for(created, what="the account's sales.account_created")
        assert env.schema_version == 2
        assert env.payload["custom"] == {
            "segment": {"type": "choice", "value": "ent"},
            "arr": {"type": "money", "value": {"amount": "120000.00", "currency": "EUR"}},
        }, "the text field is left out"
    finally:
        await reader.stop()

    async def ids(*cf: str) -> list[str]:
        r = await sales.client.get("/accounts", params={"cf": list(cf), "limit": 200}, headers=sales.rep(rep))
        assert r.status_code == 200, r.text
        return [x["id"] for x in r.json()["items"]]

    assert await ids("segment=ent", "arr>=100000") == [account["id"]]
    assert await ids("segment=smb") == []
    r = await sales.client.get("/accounts", params={"cf": "colour=red"}, headers=sales.rep(rep))
    assert r.status_code == 422, r.text


async def test_every_custom_field_filter_uses_an_index(sales: Sales) -> None:
    await _define(sales)
    db = sales.runtime.store.db
    fields = fieldset_from_doc(RecordType.ACCOUNT, await db[COLLECTION].find_one({"_id": "account"}))
    filters = (["segment=ent"], ["arr>=10"], ["segment=ent", "arr<=5"])
    for cf, owner, sort in itertools.product(filters, (None, "rita"), sorted(store.ACCOUNT_SORTS)):
        query = store.BookQuery(owner=owner, sort=sort, custom=filter_of(fields, cf))
        plan = (await store.find_accounts(db, query).limit(51).explain())["queryPlanner"]
        assert "COLLSCAN" not in str(plan["winningPlan"]), (cf, owner, sort, plan["winningPlan"])


OPPORTUNITY_FIELDS: list[dict[str, Any]] = [
    {
        "key": "deal_type",
        "label": "Deal type",
        "type": "choice",
        "required": True,
        "choices": ["new", "renewal"],
    },
    {"key": "seats", "label": "Seats", "type": "number", "integer": True, "minimum": 1},
    {"key": "close_note", "label": "Close note", "type": "text"},
]


async def _define_opportunity_fields(sales: Sales) -> None:
    admin = sales.headers("admin", "root")
    r = await sales.client.put(
        "/custom-fields/opportunity", json={"fields": OPPORTUNITY_FIELDS}, headers=admin
    )
    assert r.status_code == 200, r.text


async def test_opportunity_custom_fields_checked_stored_edited_filtered_and_sent(
    sales: Sales, kafka_bootstrap: str
) -> None:
    await _define(sales)
    await _define_opportunity_fields(sales)
    rep = sales.uid("rep")
    r = await sales.client.post("/accounts", json={"name": sales.uid("Opp Co"), "source": "referral",
                                "custom": {"segment": "smb"}}, headers=sales.rep(rep))  # fmt: skip
    assert r.status_code == 201, r.text
    body = {"account_id": r.json()["id"], "source": "referral"}
    r = await sales.client.post("/opportunities", json=body, headers=sales.rep(rep))
    assert r.status_code == 422, r.text
    assert "body.custom.deal_type" in r.text, r.text
    r = await sales.client.post(
        "/opportunities", json={**body, "custom": {"deal_type": "new", "seats": 0}}, headers=sales.rep(rep)
    )
    assert r.status_code == 422, r.text
    assert "body.custom.seats" in r.text, r.text
    assert "at least 1" in r.text, r.text

    reader = await TopicReader(kafka_bootstrap, SALES_EVENTS).start()
    try:
        custom = {"deal_type": "new", "seats": 40, "close_note": "CFO is Ada's cousin"}
        r = await sales.client.post("/opportunities", json={**body, "custom": custom}, headers=sales.rep(rep))
        assert r.status_code == 201, r.text
        opp = r.json()
        assert opp["custom"] == custom

        def created(_: list[Any]) -> list[Envelope] | None:
            envs = [e for e in reader.envelopes("opportunity.created") if e.partition_key == opp["id"]]
            return envs or None

        [env] = await reader.wait_for(created, what="the opportunity's opportunity.created")
        assert env.schema_version == 3
        assert env.payload["custom"] == {
            "deal_type": {"type": "choice", "value": "new"},
            "seats": {"type": "number", "value": 40},
        }, "the text field is left out"
    finally:
        await reader.stop()

    path = f"/opportunities/{opp['id']}"
    r = await sales.client.patch(path, json={"custom": {"deal_type": None}}, headers=sales.rep(rep))
    assert r.status_code == 422, "a required field is not cleared"
    assert "body.custom.deal_type" in r.text, "a required field is not cleared"
    r = await sales.client.patch(path, json={"custom": {"colour": "red"}}, headers=sales.rep(rep))
    assert r.status_code == 422, r.text
    assert "body.custom.colour" in r.text, r.text
    r = await sales.client.patch(
        path, json={"custom": {"deal_type": "renewal", "close_note": None}}, headers=sales.rep(rep)
    )
    assert r.status_code == 200, r.text
    assert r.json()["custom"] == {"deal_type": "renewal", "seats": 40}
    r = await sales.client.get(f"{path}/history", headers=sales.rep(rep))
    changes = [c for e in r.json()["items"] for c in e["changes"] if c["field"].startswith("custom")]
    assert changes, "the custom field edit is in the opportunity's history"

    async def ids(*cf: str) -> list[str]:
        params = {"cf": list(cf), "limit": 200}
        r = await sales.client.get("/opportunities", params=params, headers=sales.rep(rep))
        assert r.status_code == 200, r.text
        return [x["id"] for x in r.json()["items"]]

    assert await ids("deal_type=renewal", "seats>=40") == [opp["id"]]
    r = await sales.client.get(
        "/opportunities/export", params={"cf": "deal_type=renewal"}, headers=sales.rep(rep)
    )
    [row] = [x for x in csv.DictReader(io.StringIO(r.text)) if x["id"] == opp["id"]]
    assert (row["custom.deal_type"], row["custom.seats"], row["custom.close_note"]) == ("renewal", "40", "")
    assert await ids("deal_type=new") == []
    r = await sales.client.get("/opportunities", params={"cf": "seats=many"}, headers=sales.rep(rep))
    assert r.status_code == 422, r.text
    assert "query.cf" in r.text, r.text


async def test_every_opportunity_custom_field_filter_uses_an_index(sales: Sales) -> None:
    await _define_opportunity_fields(sales)
    db = sales.runtime.store.db
    fields = fieldset_from_doc(RecordType.OPPORTUNITY, await db[COLLECTION].find_one({"_id": "opportunity"}))
    filters = (["deal_type=new"], ["seats>=10"], ["deal_type=new", "seats<=5"])
    for cf, owner, sort in itertools.product(filters, (None, "rita"), sorted(store.OPPORTUNITY_SORTS)):
        query = store.OpportunityQuery(owner=owner, sort=sort, custom=filter_of(fields, cf))
        plan = (await store.find_opportunities(db, query).limit(51).explain())["queryPlanner"]
        assert "COLLSCAN" not in str(plan["winningPlan"]), (cf, owner, sort, plan["winningPlan"])


async def test_the_openapi_document_shows_the_custom_objects_and_filters(sales: Sales) -> None:
    doc = (await sales.client.get("/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    for model in ("AccountIn", "AccountOut", "OpportunityIn", "FieldsUpdateIn", "OpportunityOut"):
        assert "custom" in schemas[model]["properties"], model
    for path in ("/accounts", "/opportunities", "/opportunities/export"):
        assert "cf" in {p["name"] for p in doc["paths"][path]["get"]["parameters"]}, path


async def test_the_account_export_has_a_column_per_custom_field(sales: Sales) -> None:
    await _define(sales)
    rep = sales.uid("rep")
    custom = {"segment": "smb", "arr": {"amount": "10.50", "currency": "EUR"}}
    r = await sales.client.post("/accounts", json={"name": sales.uid("Export Co"), "source": "outbound",
                                "custom": custom}, headers=sales.rep(rep))  # fmt: skip
    assert r.status_code == 201, r.text
    r = await sales.client.get("/accounts/export", headers=sales.rep(rep))
    [row] = [x for x in csv.DictReader(io.StringIO(r.text)) if x["owner"] == rep]
    assert (row["custom.segment"], row["custom.arr"], row["custom.note"]) == ("smb", "10.50 EUR", "")
