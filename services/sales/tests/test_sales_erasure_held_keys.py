"""Erasure finds sales' inbox items of sealed handoffs through the held key (docs/governance.md
section 3, "Finding the person"), on the real broker and mongod.

An item stored from a sealed handoff names its contact in ``person_hashes`` by the id of the held
key it was opened with (``held:leads:<person id>``, time-ordered), not by the contact's hash; the
held key (or its ``learned:`` document) holds the hash. An erasure request (the gateway's hash)
then finds the item as hash -> held keys -> items, and erases it; a plaintext handoff's item, and
an item stored before this layout (its hash in ``person_hashes``), are found by the hash as before.
The owner's shredding record may reach sales' key consumer before the request reaches sales: the
shredding marker keeps its hashes, so the item is still found. Every query of it reads an index.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import pytest
from crm_contracts import envelope_for, utcnow
from crm_contracts.events.person_keys import LeadPersonKeyShreddedV1
from crm_contracts.topics import LEAD_QUALIFIED, LEADS_PERSON_KEYS
from crm_platform import erasure
from crm_platform.pseudonym import email_hash
from crm_platform.shredding import KEYS, sealed_event
from crm_platform.testing import eventually, produce_envelope, request_erasure
from sales import store as repo

pytestmark = pytest.mark.integration
Sales: TypeAlias = Any  # conftest.Sales
Doc = dict[str, Any]


async def _produce(sales: Sales, topic: str, event: Any, lead: str) -> None:
    env = envelope_for(event, source="leads", correlation_id=f"journey-{lead}")
    await produce_envelope(sales.settings.kafka_bootstrap_servers, topic, env)


async def _stored(sales: Sales, lead: str) -> Doc:
    async def item() -> Doc | None:
        found: Doc | None = await sales.runtime.db[repo.INBOX].find_one({"lead_id": lead})
        return found

    doc: Doc = await eventually(item, what=f"the inbox item of {lead}")
    return doc


async def _sealed_item(sales: Sales, make_qualified: Any, lead: str) -> tuple[Doc, str]:
    """A sealed handoff of ``lead`` (its key on the key topic first) stored: its item, and the
    id of the held key it names its contact by."""
    handoff, [key] = sealed_event(make_qualified(lead), "leads")
    await _produce(sales, LEADS_PERSON_KEYS, key, lead)
    await _produce(sales, LEAD_QUALIFIED, handoff, lead)
    return await _stored(sales, lead), f"held:leads:{key.person_id}"


async def _erased(sales: Sales, lead: str) -> Doc:
    async def done() -> Doc | None:
        doc = await sales.runtime.db[repo.INBOX].find_one({"lead_id": lead})
        email = str(doc["handoff"]["contact"]["email"]) if doc is not None else ""
        return doc if email.endswith("@erased.example") else None

    found: Doc = await eventually(done, what=f"the inbox item of {lead} erased")
    return found


async def test_a_sealed_handoffs_item_is_named_by_its_held_key_and_erased_through_it(
    sales: Sales, make_qualified: Any
) -> None:
    bootstrap = sales.settings.kafka_bootstrap_servers
    lead, kept, old, plain = (sales.uid(p) for p in ("held-erased", "held-kept", "old-layout", "plain"))
    doc, held = await _sealed_item(sales, make_qualified, lead)
    assert doc["person_hashes"] == [held], "the held key's id, not the contact's hash"
    assert doc["handoff"]["contact"]["email"] == f"{lead}@example.com"
    kept_doc, kept_held = await _sealed_item(sales, make_qualified, kept)
    # An item stored before items named the held key: its contact's hash, as the store wrote it.
    old_doc, _ = await _sealed_item(sales, make_qualified, old)
    await sales.runtime.db[repo.INBOX].update_one(
        {"_id": old_doc["_id"]}, {"$set": {"person_hashes": [email_hash(f"{old}@example.com")]}}
    )
    await _produce(sales, LEAD_QUALIFIED, make_qualified(plain), plain)  # plaintext (v1): no key
    assert (await _stored(sales, plain))["person_hashes"] == [email_hash(f"{plain}@example.com")]

    await request_erasure(bootstrap, f"{lead}@example.com")
    erased = await _erased(sales, lead)
    assert erased["person_hashes"] == [], "nothing names the person any more"
    assert f"{lead}@example.com" not in str(erased)
    marker = await sales.runtime.db[KEYS].find_one({"_id": held})
    assert marker["shredded"] is True
    assert "key" not in marker
    untouched = await sales.runtime.db[repo.INBOX].find_one({"_id": kept_doc["_id"]})
    assert untouched["handoff"]["contact"]["email"] == f"{kept}@example.com", "another person is kept"
    assert untouched["person_hashes"] == [kept_held]

    for other in (old, plain):  # found by the hash, as before
        await request_erasure(bootstrap, f"{other}@example.com")
        assert (await _erased(sales, other))["person_hashes"] == []


async def test_an_item_is_erased_when_the_owners_shredding_reached_sales_before_the_request(
    sales: Sales, make_qualified: Any
) -> None:
    """Marketing erases first and its shredding record reaches sales' key consumer (a consumer of
    its own) before the request reaches sales' erasure handler: the marker keeps the hash, so
    the request still finds the item that names the person by the key."""
    lead = sales.uid("shredded-first")
    doc, held = await _sealed_item(sales, make_qualified, lead)
    assert doc["person_hashes"] == [held]
    db = sales.runtime.db
    digest = email_hash(f"{lead}@example.com")

    async def key_held() -> Doc | None:
        found: Doc | None = await db[KEYS].find_one({"_id": held, "key": {"$exists": True}})
        return found

    await eventually(key_held, what="the held key stored")
    person_id = held.removeprefix("held:leads:")
    shredded = LeadPersonKeyShreddedV1(person_id=person_id, shredded_at=utcnow())
    await _produce(sales, LEADS_PERSON_KEYS, shredded, lead)

    async def marked() -> Doc | None:
        found: Doc | None = await db[KEYS].find_one({"_id": held, "shredded": True})
        return found

    marker = await eventually(marked, what="the held key replaced by its shredding marker")
    assert "key" not in marker
    assert marker["person_hashes"] == [digest], "the marker keeps the hash"

    await request_erasure(sales.settings.kafka_bootstrap_servers, f"{lead}@example.com")
    erased = await _erased(sales, lead)
    assert erased["person_hashes"] == []
    assert f"{lead}@example.com" not in str(erased)


def _stages(plan: Any) -> list[Doc]:
    """Every stage of an explain's plan tree."""
    if isinstance(plan, dict):
        own = [plan] if "stage" in plan else []
        return own + [s for v in plan.values() for s in _stages(v)]
    if isinstance(plan, list):
        return [s for v in plan for s in _stages(v)]
    return []


async def _plan(db: Any, collection: str, query: Doc) -> list[Doc]:
    explained = await db.command("explain", {"find": collection, "filter": query})
    return _stages(explained["queryPlanner"]["winningPlan"])


async def test_the_erasures_queries_of_the_inbox_and_the_held_keys_read_indexes(
    sales: Sales, make_qualified: Any
) -> None:
    """The request's queries (the held keys by hash, the items by hash or held key, the items not
    hashed yet that ``backfill`` and the erasure's scan look for) each read ``by_person_hash``:
    none falls back to a collection scan."""
    lead = sales.uid("explained")
    _, held = await _sealed_item(sales, make_qualified, lead)
    digest = email_hash(f"{lead}@example.com")
    db = sales.runtime.db

    async def matching(tx: Any) -> Doc:
        return await erasure.matching_query(tx, repo.INBOX_PEOPLE, digest, [])

    query = await sales.runtime.store.transaction(matching)
    assert query["$or"][0] == erasure.person_query(digest, [held])
    plans = {
        "held keys": await _plan(db, KEYS, {"person_hashes": digest}),
        "items": await _plan(db, repo.INBOX, query),
        "not hashed": await _plan(db, repo.INBOX, {"person_hashes": {"$exists": False}}),
    }
    for what, stages in plans.items():
        assert all(s["stage"] != "COLLSCAN" for s in stages), (what, stages)
        assert "by_person_hash" in {s.get("indexName") for s in stages}, (what, stages)
