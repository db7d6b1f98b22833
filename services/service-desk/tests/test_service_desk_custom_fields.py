"""Custom fields on tickets against the real mongod and broker (issue 9): the platform's pieces
(``crm_platform.custom_fields``) in the service desk: an admin defines them, ``POST /tickets``
and ``PATCH /tickets/{id}`` check a value against them (422 naming the field), the values are
stored, shown, in the ticket's history, listed with ``?cf=`` on the wildcard index (no
collection scan), and carried in ``ticket.opened`` v2's extension map (text left out)."""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from crm_contracts import Envelope, envelope_for, topics
from crm_contracts.events.sales import DealWonV1
from crm_platform.custom_fields import RecordType, filter_of
from crm_platform.custom_fields_api import COLLECTION, fieldset_from_doc
from crm_platform.settings import ServiceSettings
from crm_platform.testing import (
    TopicReader,
    eventually,
    produce_envelope,
    running_app,
    start_group_at_end,
    token_for,
)
from service_desk import store
from service_desk.main import create_app

pytestmark = pytest.mark.integration

ADMIN = {"Authorization": f"Bearer {token_for(['admin'], 'ada.admin', user_id='ada.admin')}"}
REP = {"Authorization": f"Bearer {token_for(['service_rep'], 'rita.rep', user_id='rita.rep')}"}
LEAD = {"Authorization": f"Bearer {token_for(['service_lead'], 'lena.lead', user_id='lena.lead')}"}
FIELDS: list[dict[str, Any]] = [
    {
        "key": "component",
        "label": "Component",
        "type": "choice",
        "required": True,
        "choices": ["billing", "api"],
    },
    {"key": "affected_users", "label": "Affected users", "type": "number", "integer": True, "minimum": 0},
    {"key": "caller_nickname", "label": "Caller's nickname", "type": "text"},
]


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


async def _account(client: httpx.AsyncClient, bootstrap: str, deal: DealWonV1) -> str:
    env = envelope_for(deal, source="sales", correlation_id=f"journey-{deal.deal_id}")
    await produce_envelope(bootstrap, topics.DEAL_WON, env)

    async def landed() -> str | None:
        items = (await client.get("/accounts", params={"deal_id": deal.deal_id}, headers=ADMIN)).json()[
            "items"
        ]
        return str(items[0]["account_id"]) if items else None

    return await eventually(landed, what=f"the account of {deal.deal_id}")


async def test_ticket_custom_fields_checked_stored_edited_filtered_and_sent(
    client: httpx.AsyncClient, kafka_bootstrap: str, make_deal: Callable[..., DealWonV1]
) -> None:
    r = await client.put("/custom-fields/ticket", json={"fields": FIELDS}, headers=LEAD)
    assert r.status_code == 403, "admins define custom fields"
    r = await client.put("/custom-fields/ticket", json={"fields": FIELDS}, headers=ADMIN)
    assert r.status_code == 200, r.text
    r = await client.get("/custom-fields/ticket", headers=REP)
    assert [f["key"] for f in r.json()["fields"]] == ["component", "affected_users", "caller_nickname"]
    assert (await client.get("/custom-fields/lead", headers=REP)).status_code == 404

    account_id = await _account(client, kafka_bootstrap, make_deal())
    body = {"account_id": account_id, "subject": "Invoice wrong", "request": "Please fix", "assign_to": "me"}
    r = await client.post("/tickets", json=body, headers=REP)
    assert r.status_code == 422, r.text
    assert "body.custom.component" in r.text, "a required custom field"
    r = await client.post("/tickets", json={**body, "custom": {"component": "ui"}}, headers=REP)
    assert r.status_code == 422, r.text
    assert "must be one of billing, api" in r.text

    reader = await TopicReader(kafka_bootstrap, topics.SERVICE_DESK_EVENTS).start()
    try:
        custom = {"component": "billing", "affected_users": 12, "caller_nickname": "Bobby"}
        r = await client.post("/tickets", json={**body, "custom": custom}, headers=REP)
        assert r.status_code == 201, r.text
        ticket = r.json()
        assert ticket["custom"] == custom

        def opened(_: list[Any]) -> list[Envelope] | None:
            envs = [
                e for e in reader.envelopes("ticket.opened") if e.payload["ticket_id"] == ticket["ticket_id"]
            ]
            return envs or None

        [env] = await reader.wait_for(opened, what="the ticket's ticket.opened")
        assert env.schema_version == 2
        assert env.payload["custom"] == {
            "component": {"type": "choice", "value": "billing"},
            "affected_users": {"type": "number", "value": 12},
        }, "the text field is left out"
    finally:
        await reader.stop()

    path = f"/tickets/{ticket['ticket_id']}"
    r = await client.patch(path, json={"custom": {"component": None}}, headers=REP)
    assert r.status_code == 422, "a required field is not cleared"
    assert "body.custom.component" in r.text
    r = await client.patch(path, json={"custom": {"affected_users": -1}}, headers=REP)
    assert r.status_code == 422, r.text
    assert "body.custom.affected_users" in r.text
    r = await client.patch(path, json={"custom": {"component": "api", "caller_nickname": None}}, headers=REP)
    assert r.status_code == 200, r.text
    assert r.json()["custom"] == {"component": "api", "affected_users": 12}
    history = (await client.get(f"{path}/history", headers=REP)).json()["items"]
    assert any(c["field"].startswith("custom") for e in history for c in e["changes"]), history

    async def ids(*cf: str) -> list[str]:
        r = await client.get("/tickets", params={"cf": list(cf), "account_id": account_id}, headers=REP)
        assert r.status_code == 200, r.text
        return [t["ticket_id"] for t in r.json()["items"]]

    assert await ids("component=api", "affected_users>=10") == [ticket["ticket_id"]]
    r = await client.get(
        "/tickets/export", params={"cf": "component=api", "account_id": account_id}, headers=REP
    )
    [row] = list(csv.DictReader(io.StringIO(r.text)))
    assert (row["custom.component"], row["custom.affected_users"], row["custom.caller_nickname"]) == (
        "api", "12", ""
    )  # fmt: skip
    assert await ids("component=billing") == []
    r = await client.get("/tickets", params={"cf": "colour=red"}, headers=REP)
    assert r.status_code == 422, r.text
    assert "query.cf" in r.text


async def test_every_ticket_custom_field_filter_uses_an_index(client: httpx.AsyncClient) -> None:
    r = await client.put("/custom-fields/ticket", json={"fields": FIELDS}, headers=ADMIN)
    assert r.status_code == 200, r.text
    db = client.app.state.runtime.db  # type: ignore[attr-defined]
    fields = fieldset_from_doc(RecordType.TICKET, await db[COLLECTION].find_one({"_id": "ticket"}))
    filters = (["component=api"], ["affected_users>=10"], ["component=api", "affected_users<=5"])
    for cf, status, sort in itertools.product(filters, (None, "open"), sorted(store.TICKET_SORTS)):
        query = store.TicketQuery(status=status, sort=sort, custom=filter_of(fields, cf))
        plan = (await (await store.find_tickets(db, query)).limit(101).explain())["queryPlanner"]
        assert "COLLSCAN" not in str(plan["winningPlan"]), (cf, status, sort, plan["winningPlan"])


async def test_the_openapi_document_shows_the_custom_object_and_filter(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    for model in ("TicketIn", "TicketEditIn", "TicketOut"):
        assert "custom" in schemas[model]["properties"], model
    assert "cf" in {p["name"] for p in doc["paths"]["/tickets"]["get"]["parameters"]}
    assert "patch" in doc["paths"]["/tickets/{ticket_id}"]
    assert "/custom-fields/{record_type}" in doc["paths"]
