"""Retention (issue 9) on the real mongod: sales' periodic job anonymises contacts and decided
inbox items, strips a lost deal's contacts and deletes activities once past their configured
period, leaves younger, pending and unconfigured records alone, and audits each change as
``system:sales`` / ``RETENTION <record type>``."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any, TypeAlias

import pytest
from crm_contracts import utcnow
from crm_platform.audit import AUDIT_LOG
from crm_platform.retention import enforce
from crm_platform.settings import ServiceSettings
from crm_platform.testing import eventually
from sales import store
from sales.settings import SalesSettings

pytestmark = pytest.mark.integration
Sales: TypeAlias = Any  # conftest.Sales
DAYS = 30


@pytest.fixture(scope="module")
def sales_settings(kafka_bootstrap: str, mongodb_uri: str) -> ServiceSettings:
    from crm_platform.testing import isolated_settings

    days = json.dumps({"contact": DAYS, "inbox_item": DAYS, "activity": DAYS})
    return isolated_settings(
        SalesSettings, "sales", kafka_bootstrap, mongodb_uri,
        CRM_RETENTION_DAYS=days, CRM_RETENTION_EVERY_SECONDS="0.2",
    )  # fmt: skip


async def _age(sales: Sales, collection: str, doc_id: str, field: str, days: int) -> None:
    """Make a record look ``days`` old (written straight to the database, as time would)."""
    await sales.runtime.store.db[collection].update_one(
        {"_id": doc_id}, {"$set": {field: utcnow() - timedelta(days=days)}}
    )


async def _contact(sales: Sales, name: str, rep: str) -> dict[str, Any]:
    body = {"email": f"{sales.uid('p')}@example.com", "name": name, "source": "referral", "phone": "+44 1"}
    r = await sales.client.post("/contacts", json=body, headers=sales.rep(rep))
    assert r.status_code == 201, r.text
    return dict(r.json())


async def test_expired_records_are_anonymised_or_deleted_and_audited(sales: Sales) -> None:
    db, rep = sales.runtime.store.db, sales.uid("rhys")
    await sales.activate(rep)
    old_c, young_c = [await _contact(sales, name, rep) for name in ("Old Person", "Young Person")]
    await _age(sales, store.CONTACTS, old_c["id"], "updated_at", DAYS + 1)
    await _age(sales, store.CONTACTS, young_c["id"], "updated_at", DAYS - 1)
    decided, _ = await sales.qualify()
    if decided["owner"] != rep:
        await sales.assign(decided["lead_id"], rep)
    r = await sales.client.post(f"/inbox/{decided['lead_id']}/reject", json={"reason_code": "no_need"},
                                headers=sales.rep(rep))  # fmt: skip
    assert r.status_code == 200, r.text
    pending, _ = await sales.qualify()
    for item in (decided, pending):
        await _age(sales, store.INBOX, item["id"], "received_at", DAYS + 5)
    opp = await sales.opportunity_for(rep)
    call = {"type": "call", "summary": "hi"}
    r = await sales.client.post(f"/opportunities/{opp['id']}/activities", json=call, headers=sales.rep(rep))
    activity = r.json()["id"]
    await _age(sales, store.ACTIVITIES, activity, "logged_at", DAYS + 1)

    async def enforced() -> bool:
        doc = await db[store.ACTIVITIES].find_one({"_id": activity})
        contact = await db[store.CONTACTS].find_one({"_id": old_c["id"]})
        item = await db[store.INBOX].find_one({"_id": decided["id"]})
        return (
            doc is None
            and contact["name"] == "[anonymised]"
            and item["handoff"]["contact"]["name"] == "[anonymised]"
        )

    await eventually(enforced, what="the retention job's round")
    gone = await sales.client.get(f"/contacts/{old_c['id']}", headers=sales.rep(rep))
    assert gone.status_code == 200, gone.text
    assert (gone.json()["name"], gone.json()["phone"]) == ("[anonymised]", None)
    assert gone.json()["email"] == f"anonymised-{old_c['id']}@anonymised.example"
    assert (await sales.client.get(f"/contacts/{young_c['id']}", headers=sales.rep(rep))).json()[
        "name"
    ] == "Young Person"
    item = (await sales.client.get(f"/inbox/{decided['lead_id']}", headers=sales.manager())).json()
    assert item["handoff"]["contact"]["name"] == "[anonymised]"
    assert item["verdict"]["verdict"] == "rejected", "the verdict stays"
    still = await db[store.INBOX].find_one({"_id": pending["id"]})
    assert still["handoff"]["contact"]["name"] == "Ada Lovelace", "a pending item is never expired"
    assert (await db[store.OPPORTUNITIES].find_one({"_id": opp["id"]}))["contacts"], "not configured: kept"

    entries = {
        e["record"]["id"]: e async for e in db[AUDIT_LOG].find({"operation": {"$regex": "^RETENTION "}})
    }
    contact_entry, activity_entry = entries[old_c["id"]], entries[activity]
    assert contact_entry["actor"]["user_id"] == "system:sales"
    assert contact_entry["operation"] == "RETENTION contact"
    name = next(c for c in contact_entry["changes"] if c["field"] == "name")
    assert (name["before"], name["after"]) == ("Old Person", "[anonymised]")
    assert (activity_entry["operation"], activity_entry["action"]) == ("RETENTION activity", "delete")
    assert young_c["id"] not in entries


async def test_a_lost_opportunity_past_its_period_loses_its_contacts_and_custom_values(sales: Sales) -> None:
    rep = sales.uid("rory")
    lost, young = await sales.opportunity_for(rep), await sales.opportunity_for(rep)
    db = sales.runtime.store.db
    for opp in (lost, young):
        r = await sales.move(opp["id"], "lost", rep, fields={"lost_reason": "went elsewhere"})
        assert r.status_code == 200, r.text
        await db[store.OPPORTUNITIES].update_one({"_id": opp["id"]}, {"$set": {"custom": {"note": "Ada's"}}})
    await _age(sales, store.OPPORTUNITIES, lost["id"], "lost_at", DAYS + 1)
    done = await enforce(sales.runtime.store, store.RETENTION_RULES, {"lost_opportunity": DAYS})
    assert done.get("lost_opportunity") == 1, done
    stripped = await db[store.OPPORTUNITIES].find_one({"_id": lost["id"]})
    assert (stripped["contacts"], stripped["custom"], stripped["lost_reason"]) == ([], {}, "went elsewhere")
    kept = await db[store.OPPORTUNITIES].find_one({"_id": young["id"]})
    assert kept["custom"] == {"note": "Ada's"}, "a younger lost deal is kept"
    assert kept["contacts"]
