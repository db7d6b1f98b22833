"""POST /leads/bulk against the real mongod and broker: the same merges and events as one by one."""

from __future__ import annotations

import uuid
from typing import Any, TypeAlias

import pytest
from crm_contracts import Envelope
from crm_contracts.topics import LEADS_EVENTS
from crm_platform.testing import TopicReader, auth_headers

pytestmark = pytest.mark.integration
Leads: TypeAlias = Any  # conftest.Leads (conftest is not importable in importlib mode)

MARKETING = auth_headers(["marketing"], "mia")


def email() -> str:
    return f"bulk-{uuid.uuid4().hex[:12]}@example.com"


def lead(address: str, **fields: Any) -> dict[str, Any]:
    return {
        "name": "Ada",
        "email": address,
        "source_channel": "web_form",
        "consent": {"marketing_email": True},
        **fields,
    }


async def test_bulk_capture_creates_and_merges_in_order_with_one_event_each(
    leads: Leads, kafka_bootstrap: str
) -> None:
    known, new, twice = email(), email(), email()
    reader = await TopicReader(kafka_bootstrap, LEADS_EVENTS).start()
    try:
        existing = await leads.capture(known)
        body = {
            "leads": [
                lead(new),
                lead(f" {known.upper()} ", company="Engines Ltd", source_channel="trade_show"),
                lead(twice, source_channel="webinar"),
                lead(twice, name="Ada L.", company="Later Co", source_channel="import"),
            ]
        }
        r = await leads.client.post("/leads/bulk", json=body, headers=MARKETING)
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [x["merged"] for x in results] == [False, True, False, True]
        assert [x["lead"]["email"] for x in results] == [new, known, twice, twice]
        assert results[1]["lead"]["id"] == existing["lead"]["id"]
        assert results[1]["lead"]["company"] == "Engines", "filled fields are kept, as one by one"
        assert [t["channel"] for t in results[1]["lead"]["touches"]] == ["webinar", "trade_show"]
        assert results[2]["lead"]["id"] == results[3]["lead"]["id"], "one lead per email within a batch"
        merged_twice = results[3]["lead"]
        assert [t["channel"] for t in merged_twice["touches"]] == ["webinar", "import"]
        assert merged_twice["company"] == "Later Co"

        for x in results:  # what is stored is what was answered
            stored = (await leads.client.get(f"/leads/{x['lead']['id']}", headers=MARKETING)).json()
            assert stored["email"] == x["lead"]["email"]
        stored = (await leads.client.get(f"/leads/{merged_twice['id']}", headers=MARKETING)).json()
        assert stored["touch_count"] == 2

        ids = {x["lead"]["id"] for x in results}

        def captured(_: list[Any]) -> list[Envelope] | None:
            envs = [e for e in reader.envelopes("lead.captured") if e.partition_key in ids]
            return envs if len(envs) >= 5 else None

        envs = await reader.wait_for(captured, what="five lead.captured events")
        assert len(envs) == 5, "one event per capture (the first capture of the known email included)"
        known_events = [e.payload["merged"] for e in envs if e.partition_key == existing["lead"]["id"]]
        assert known_events == [False, True]
        per_lead = [e.payload["merged"] for e in envs if e.partition_key == merged_twice["id"]]
        assert per_lead == [False, True], "in the batch's order"
    finally:
        await reader.stop()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"leads": []}, "body.leads"),
        ({"leads": [lead("a@example.com"), lead("not-an-email")]}, "body.leads.1.email"),
        ({"leads": [lead("a@example.com", consent={})]}, "body.leads.0.consent.marketing_email"),
        ({"leads": [lead(f"x{i}@example.com") for i in range(1001)]}, "body.leads"),
        ({"lead": [lead("a@example.com")]}, "body.leads"),
    ],
)
async def test_bad_bulk_capture_is_a_422_naming_the_field_and_stores_nothing(
    leads: Leads, body: dict[str, Any], field: str
) -> None:
    r = await leads.client.post("/leads/bulk", json=body, headers=MARKETING)
    assert r.status_code == 422, r.text
    assert field in {f["field"] for f in r.json()["fields"]}, r.json()
    assert (await leads.client.get("/leads?limit=1", headers=MARKETING)).status_code == 200
    page = (await leads.client.get("/leads?limit=200", headers=MARKETING)).json()
    assert "a@example.com" not in {x["email"] for x in page["items"]}


async def test_bulk_capture_roles(leads: Leads) -> None:
    body = {"leads": [lead(email())]}
    assert (await leads.client.post("/leads/bulk", json=body)).status_code == 401
    for role in ("sales_rep", "sales_manager", "analyst", "service_rep"):
        r = await leads.client.post("/leads/bulk", json=body, headers=auth_headers([role], "x"))
        assert r.status_code == 403, role
    r = await leads.client.post("/leads/bulk", json=body, headers=auth_headers(["admin"], "root"))
    assert r.status_code == 200
