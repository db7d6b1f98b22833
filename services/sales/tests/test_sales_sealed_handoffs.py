"""Sales opens marketing's sealed handoffs (issue 9, crypto-shredding; crm_platform.shredding),
on the real broker and mongod: a ``lead.qualified`` v2 lands in the inbox with the contact's
real name and e-mail once marketing's key for the person is in sales' database, whether the key
arrived first or AFTER the event (the event is retried meanwhile, not dead-lettered); a key
shredded by marketing opens to erased stand-ins; sales' own ``deal.won`` goes out as v3, its
contacts sealed under sales' keys (on ``crm.sales.person-keys``)."""

from __future__ import annotations

import asyncio
from typing import Any

from crm_contracts import Envelope, envelope_for
from crm_contracts.events.person_keys import LeadPersonKeyShreddedV1
from crm_contracts.topics import DEAL_WON, LEAD_QUALIFIED, LEADS_PERSON_KEYS, SALES_PERSON_KEYS
from crm_platform.shredding import KEYS, keys_missing, sealed_event, until_key_stored
from crm_platform.testing import TopicReader, eventually, opened_payload, produce_envelope
from prometheus_client import REGISTRY

WON = {
    "amount": 100,
    "products": [{"sku": "CRM-ENT", "name": "CRM Enterprise seat", "quantity": 1, "unit_price": 100.0}],
    "commitments": [],
}
CHARLES = {
    "name": "Charles Babbage",
    "email": "charles@example.com",
    "phone": "+44 20 7946 1234",
    "role": "COO",
}


async def _produce(sales: Any, topic: str, event: Any, correlation_id: str) -> Envelope:
    env = envelope_for(event, source="leads", correlation_id=correlation_id)
    await produce_envelope(sales.settings.kafka_bootstrap_servers, topic, env)
    return env


async def _landed(sales: Any, lead_id: str) -> dict[str, Any]:
    async def item() -> dict[str, Any] | None:
        return await sales.inbox_item(lead_id)

    found: dict[str, Any] = await eventually(item, what=f"inbox item for {lead_id}")
    return found


async def test_a_sealed_handoff_opens_when_its_key_arrived_first(sales: Any, make_qualified: Any) -> None:
    lead_id = sales.uid("sealed")
    plain = make_qualified(lead_id)
    handoff, [key] = sealed_event(plain, "leads")
    await _produce(sales, LEADS_PERSON_KEYS, key, lead_id)
    await _produce(sales, LEAD_QUALIFIED, handoff, lead_id)
    item = await _landed(sales, lead_id)
    assert item["handoff"]["contact"]["email"] == f"{lead_id}@example.com"
    assert item["handoff"]["contact"]["name"] == "Ada Lovelace"
    assert item["handoff"]["contact"]["role"] == "CTO"

    # The handoff may open with the key its key consumer fetched and has not yet stored (its
    # own transaction, a moment later; crm_platform.shredding "fetched"): the key ends up held.
    async def stored() -> dict[str, Any] | None:
        found: dict[str, Any] | None = await sales.runtime.db[KEYS].find_one({"person_id": key.person_id})
        return found

    held = await eventually(stored, what=f"the person key of {lead_id} held")
    assert held["owner"] == "leads"


async def test_a_sealed_handoff_whose_key_comes_later_waits_for_it(sales: Any, make_qualified: Any) -> None:
    lead_id = sales.uid("late-key")
    handoff, [key] = sealed_event(make_qualified(lead_id), "leads")
    await _produce(sales, LEAD_QUALIFIED, handoff, lead_id)

    labels = {"service": "sales", "topic": LEAD_QUALIFIED}
    before = REGISTRY.get_sample_value("crm_person_key_waits_total", labels) or 0.0

    async def waiting() -> bool:
        # The consumer has the event and puts it back, keyless (not dead-lettered): it waits.
        return (REGISTRY.get_sample_value("crm_person_key_waits_total", labels) or 0.0) > before

    await eventually(waiting, what="the handoff waiting for its key")
    assert await sales.inbox_item(lead_id) is None
    await _produce(sales, LEADS_PERSON_KEYS, key, lead_id)
    item = await _landed(sales, lead_id)
    assert item["handoff"]["contact"]["email"] == f"{lead_id}@example.com"


async def test_a_batch_knows_the_keys_it_still_needs_and_is_woken_when_one_is_stored(
    sales: Any, make_qualified: Any
) -> None:
    """What the consumer's batch path waits on before storing a batch of sealed events in one
    transaction: the count of held keys still missing (one query), and the wake-up when the
    key consumer of this process stores one (not only a backoff running out)."""
    lead_ids = [sales.uid("batch-key") for _ in range(3)]
    sealed = [sealed_event(make_qualified(lead_id), "leads") for lead_id in lead_ids]
    db = sales.runtime.db
    assert await keys_missing(db, [handoff for handoff, _ in sealed]) == 3
    assert await keys_missing(db, [make_qualified(lead_ids[0])]) == 0  # plaintext v1: no key
    for lead_id, (handoff, _) in zip(lead_ids, sealed, strict=True):
        await _produce(sales, LEAD_QUALIFIED, handoff, lead_id)
    woken = asyncio.create_task(until_key_stored(60))
    await asyncio.sleep(0)  # the waiter is registered before the key can be stored
    await _produce(sales, LEADS_PERSON_KEYS, sealed[0][1][0], lead_ids[0])
    assert await woken is True

    async def one_fewer() -> bool:
        return await keys_missing(db, [handoff for handoff, _ in sealed]) == 2

    await eventually(one_fewer, what="the first key held")
    for lead_id, (_, [key]) in zip(lead_ids[1:], sealed[1:], strict=True):
        await _produce(sales, LEADS_PERSON_KEYS, key, lead_id)
    for lead_id in lead_ids:
        item = await _landed(sales, lead_id)
        assert item["handoff"]["contact"]["email"] == f"{lead_id}@example.com"
    assert await keys_missing(db, [handoff for handoff, _ in sealed]) == 0


async def test_a_handoff_of_a_person_whose_key_was_shredded_opens_to_erased_stand_ins(
    sales: Any, make_qualified: Any
) -> None:
    lead_id = sales.uid("shredded")
    handoff, [key] = sealed_event(make_qualified(lead_id), "leads")
    await _produce(sales, LEADS_PERSON_KEYS, key, lead_id)
    shredded = LeadPersonKeyShreddedV1(person_id=key.person_id, shredded_at=key.issued_at)
    await _produce(sales, LEADS_PERSON_KEYS, shredded, lead_id)

    async def marked() -> bool:
        doc = await sales.runtime.db[KEYS].find_one({"person_id": key.person_id})
        return doc is not None and doc.get("shredded") is True and "key" not in doc

    await eventually(marked, what="the held key replaced by its shredding marker")
    await _produce(sales, LEAD_QUALIFIED, handoff, lead_id)
    item = await _landed(sales, lead_id)
    assert item["handoff"]["contact"]["email"].endswith("@erased.example")
    assert f"{lead_id}@example.com" not in str(item)


async def test_sales_deal_won_goes_out_sealed_under_sales_keys(sales: Any, kafka_bootstrap: str) -> None:
    won = await TopicReader(kafka_bootstrap, DEAL_WON).start()
    keys = await TopicReader(kafka_bootstrap, SALES_PERSON_KEYS).start()
    try:
        rep = sales.uid("rep")
        opp = await sales.opportunity_for(rep)
        r = await sales.move(opp["id"], "won", rep, fields=WON, contacts=[CHARLES])
        assert r.status_code == 200, r.text

        def mine(_: list[Any]) -> Envelope | None:
            return next((e for e in won.envelopes("deal.won") if e.payload["deal_id"] == opp["id"]), None)

        env = await won.wait_for(mine, what="the deal.won")
        assert env.schema_version == 3
        email = f"{opp['lead_id']}@example.com"
        assert email not in env.model_dump_json()
        for value in ("Ada Lovelace", "Charles Babbage", "charles@example.com", "7946 1234"):
            assert value not in env.model_dump_json()
        person_ids = [s["person_id"] for s in env.payload["sealed_contacts"]]
        opened = await opened_payload(sales.runtime.db, env)
        assert [c["email"] for c in opened["contacts"]] == [email, "charles@example.com"]
        assert opened["contacts"][1]["phone"] == "+44 20 7946 1234"
        assert [c["role"] for c in env.payload["contacts"]] == ["CTO", "COO"], "the role stays plain"
        await keys.wait_for(
            lambda _: (
                [e for e in keys.envelopes("sales.person_key_issued") if e.partition_key in person_ids]
                or None
            ),
            what="sales' key for the contact",
        )
    finally:
        await won.stop()
        await keys.stop()


async def test_the_key_consumer_is_watched_and_rejoins_like_the_department_s_own(
    sales: Any, make_qualified: Any
) -> None:
    runtime = sales.runtime
    watchdog = runtime.key_watchdog
    assert watchdog is not None
    assert watchdog.config.group_id == f"{sales.settings.group_id}.person-keys"
    assert watchdog.config.topics == [LEADS_PERSON_KEYS]
    before = runtime._key_task
    await runtime._rejoin_key_consumer()
    assert runtime._key_task is not None
    assert runtime._key_task is not before, "a fresh member"

    # Still reading: a key produced now reaches sales' database.
    lead_id = sales.uid("after-rejoin")
    _, [key] = sealed_event(make_qualified(lead_id), "leads")
    await _produce(sales, LEADS_PERSON_KEYS, key, lead_id)

    async def held() -> bool:
        return await runtime.db[KEYS].count_documents({"person_id": key.person_id}) == 1

    await eventually(held, what="the key held after the rejoin")
