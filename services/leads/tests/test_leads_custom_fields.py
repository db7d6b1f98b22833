"""Custom fields on leads against the real mongod and broker (issue 9): an admin defines them,
a capture or edit is checked against them (422 naming the field and why), they are stored,
listed with ``?cf=`` filters on the wildcard index, documented in OpenAPI, audited, and
carried in ``lead.captured`` v2's extension map (text left out)."""

from __future__ import annotations

import itertools
import uuid
from typing import Any, TypeAlias

import pytest
from crm_contracts import Envelope
from crm_contracts.topics import LEADS_EVENTS
from crm_platform.custom_fields import RecordType, filter_of
from crm_platform.custom_fields_api import COLLECTION, fieldset_from_doc
from crm_platform.testing import TopicReader, auth_headers
from leads import store

pytestmark = pytest.mark.integration
Leads: TypeAlias = Any  # conftest.Leads

ADMIN = auth_headers(["admin"], "root")
MARKETING = auth_headers(["marketing"], "mia")
ANALYST = auth_headers(["analyst"], "ann")

FIELDS: list[dict[str, Any]] = [
    {"key": "tier", "label": "Tier", "type": "choice", "required": True, "choices": ["gold", "silver"]},
    {"key": "seats", "label": "Seats", "type": "number", "integer": True, "minimum": 1, "maximum": 10000},
    {"key": "renewal", "label": "Renewal", "type": "date", "earliest": "2020-01-01"},
    {"key": "budget", "label": "Budget", "type": "money", "currency": "EUR", "minimum": 0},
    {"key": "nickname", "label": "Nickname", "type": "text", "max_length": 20, "pattern": "[A-Za-z ]+"},
]


def _body(**custom: Any) -> dict[str, Any]:
    return {
        "name": "Ada",
        "email": f"cf-{uuid.uuid4().hex[:12]}@example.com",
        "source_channel": "webinar",
        "consent": {"marketing_email": True},
        "custom": custom,
    }


async def _define(leads: Leads) -> None:
    r = await leads.client.put("/custom-fields/lead", json={"fields": FIELDS}, headers=ADMIN)
    assert r.status_code == 200, r.text


async def test_only_admins_define_fields_and_a_bad_definition_is_a_422(leads: Leads) -> None:
    r = await leads.client.put("/custom-fields/lead", json={"fields": FIELDS}, headers=MARKETING)
    assert r.status_code == 403, r.text
    bad = [{"key": "tier", "label": "Tier", "type": "choice"}]
    r = await leads.client.put("/custom-fields/lead", json={"fields": bad}, headers=ADMIN)
    assert r.status_code == 422, r.text
    assert "choice field needs its choices" in r.text
    r = await leads.client.put("/custom-fields/ticket", json={"fields": []}, headers=ADMIN)
    assert r.status_code == 404, "the service desk owns tickets, not marketing"
    await _define(leads)
    r = await leads.client.get("/custom-fields/lead", headers=ANALYST)
    assert r.status_code == 200, r.text
    assert [f["key"] for f in r.json()["fields"]] == [f["key"] for f in FIELDS]
    assert r.json()["changed_by"] == "root"
    audit = await leads.client.get("/audit", params={"record_type": COLLECTION}, headers=ADMIN)
    assert audit.status_code == 200, audit.text
    assert any(e["record"]["id"] == "lead" for e in audit.json()["items"]), "the change is audited"


@pytest.mark.parametrize(
    ("custom", "field", "why"),
    [
        ({}, "tier", "is required"),
        ({"tier": "bronze"}, "tier", "must be one of gold, silver"),
        ({"tier": "gold", "seats": 2.5}, "seats", "must be a whole number"),
        ({"tier": "gold", "seats": 0}, "seats", "must be at least 1"),
        ({"tier": "gold", "renewal": "2019-12-31"}, "renewal", "must be between"),
        ({"tier": "gold", "renewal": "31/12/2026"}, "renewal", "YYYY-MM-DD"),
        ({"tier": "gold", "budget": {"amount": "10", "currency": "USD"}}, "budget", "currency must be EUR"),
        ({"tier": "gold", "nickname": "R2-D2"}, "nickname", "must match"),
        ({"tier": "gold", "shoe_size": 44}, "shoe_size", "is not a custom field of lead"),
    ],
)
async def test_a_value_that_does_not_fit_is_a_422_naming_the_field(
    leads: Leads, custom: dict[str, Any], field: str, why: str
) -> None:
    await _define(leads)
    r = await leads.client.post("/leads", json=_body(**custom), headers=MARKETING)
    assert r.status_code == 422, r.text
    assert f"body.custom.{field}" in r.text, r.text
    assert why in r.text, r.text


async def test_values_are_stored_edited_filtered_and_sent_without_text(
    leads: Leads, kafka_bootstrap: str
) -> None:
    await _define(leads)
    reader = await TopicReader(kafka_bootstrap, LEADS_EVENTS).start()
    try:
        budget = {"amount": "1250.50", "currency": "EUR"}
        custom = {"tier": "gold", "seats": 40, "renewal": "2027-03-31", "budget": budget, "nickname": "Ada"}
        r = await leads.client.post("/leads", json=_body(**custom), headers=MARKETING)
        assert r.status_code == 201, r.text
        lead = r.json()["lead"]
        assert lead["custom"] == custom

        def captured(_: list[Any]) -> list[Envelope] | None:
            envs = [e for e in reader.envelopes("lead.captured") if e.partition_key == lead["id"]]
            return envs or None

        [env] = await reader.wait_for(captured, what="the lead's lead.captured")
        assert env.schema_version == 3, "v2 with stand-ins for the e-mail and name (crm_platform.shredding)"
        assert env.payload["custom"] == {
            "tier": {"type": "choice", "value": "gold"},
            "seats": {"type": "number", "value": 40},
            "renewal": {"type": "date", "value": "2027-03-31"},
            "budget": {"type": "money", "value": budget},
        }, "every defined value but the text one (it may be personal data)"
    finally:
        await reader.stop()

    r = await leads.client.patch(f"/leads/{lead['id']}", json={"custom": {"tier": None}}, headers=MARKETING)
    assert r.status_code == 422, "a required field cannot be cleared"
    assert "body.custom.tier" in r.text, r.text
    edit = {"custom": {"tier": "silver", "nickname": None, "seats": 41}}
    r = await leads.client.patch(f"/leads/{lead['id']}", json=edit, headers=MARKETING)
    assert r.status_code == 200, r.text
    assert r.json()["custom"] == {"tier": "silver", "seats": 41, "renewal": "2027-03-31", "budget": budget}
    history = await leads.client.get(f"/leads/{lead['id']}/history", headers=ADMIN)
    [change] = [c for c in history.json()["items"][0]["changes"] if c["field"] == "custom"]
    assert (change["before"]["tier"], change["after"]["tier"]) == ("gold", "silver"), change

    async def ids(*cf: str) -> list[str]:
        r = await leads.client.get("/leads", params={"cf": list(cf), "limit": 200}, headers=MARKETING)
        assert r.status_code == 200, r.text
        return [x["id"] for x in r.json()["items"]]

    assert lead["id"] in await ids("tier=silver", "seats>=41", "renewal<=2027-12-31", "budget>=1000")
    assert lead["id"] not in await ids("tier=gold")
    assert lead["id"] not in await ids("seats>=42")
    r = await leads.client.get("/leads", params={"cf": "seats>=many"}, headers=MARKETING)
    assert r.status_code == 422, r.text
    assert "query.cf" in r.text, r.text


async def test_every_custom_field_filter_uses_an_index(leads: Leads) -> None:
    await _define(leads)
    for tier in ("gold", "silver"):
        await leads.client.post("/leads", json=_body(tier=tier, seats=3), headers=MARKETING)
    db = leads.runtime.store.db
    fields = fieldset_from_doc(RecordType.LEAD, await db[COLLECTION].find_one({"_id": "lead"}))
    filters = (["tier=gold"], ["seats>=2"], ["renewal<=2030-01-01"], ["budget>=1"], ["tier=gold", "seats<=5"])
    for cf, status, sort in itertools.product(filters, (None, "new"), sorted(store.LEAD_SORTS)):
        query = store.LeadQuery(status=status, sort=sort, custom=filter_of(fields, cf))
        plan = (await store.find_leads(db, query).limit(51).explain())["queryPlanner"]
        assert "COLLSCAN" not in str(plan["winningPlan"]), (cf, status, sort, plan["winningPlan"])


async def test_the_openapi_document_shows_the_custom_object(leads: Leads) -> None:
    doc = (await leads.client.get("/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    assert "custom" in schemas["LeadOut"]["properties"]
    assert "custom" in schemas["CaptureIn"]["properties"]
    assert "/custom-fields/{record_type}" in doc["paths"]
    assert "FieldDefinition" in schemas
