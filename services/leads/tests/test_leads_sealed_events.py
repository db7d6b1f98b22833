"""Marketing's events carry the person sealed (issue 9, crypto-shredding; crm_platform.shredding),
on the real broker and mongod: ``lead.captured`` v3 and ``lead.qualified`` v2 hold no e-mail,
name or phone in their bytes; the lead's data key is in marketing's database and on
``crm.leads.person-keys`` (published through the outbox with the first event sealed with it),
one key per person however often they are captured; the key opens what was sealed; erasure
destroys it and publishes its shredding under the same record key."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from crm_contracts import Envelope, envelope_for
from crm_contracts.events.governance import ErasureRequestedV1
from crm_contracts.topics import GATEWAY_ERASURE_REQUESTS, LEAD_QUALIFIED, LEADS_EVENTS, LEADS_PERSON_KEYS
from crm_platform.pseudonym import email_hash
from crm_platform.shredding import KEYS
from crm_platform.testing import TopicReader, auth_headers, eventually, opened_payload, produce_envelope

NAME = "Grace Hopper"
PHONE_FREE = ("grace", "hopper")


def _mine(reader: TopicReader, event_type: str, lead_id: str) -> list[Envelope]:
    return [e for e in reader.envelopes(event_type) if e.partition_key == lead_id]


async def test_captured_and_qualified_events_are_sealed_and_the_key_opens_them(
    leads: Any, kafka_bootstrap: str
) -> None:
    email = f"grace-{uuid.uuid4().hex[:10]}@example.com"
    events = await TopicReader(kafka_bootstrap, LEADS_EVENTS).start()
    handoffs = await TopicReader(kafka_bootstrap, LEAD_QUALIFIED).start()
    keys = await TopicReader(kafka_bootstrap, LEADS_PERSON_KEYS).start()
    try:
        lead = await leads.qualified_lead(email=email, name=NAME)
        again = await leads.capture(email=email.upper(), name=NAME)
        assert again["lead"]["id"] == lead["id"]

        def both(_: list[Any]) -> list[Envelope] | None:
            found = _mine(events, "lead.captured", lead["id"])
            return found if len(found) == 2 else None

        captured = await events.wait_for(both, what="the two lead.captured of the lead")
        [handoff] = await handoffs.wait_for(
            lambda _: _mine(handoffs, "lead.qualified", lead["id"]) or None, what="lead.qualified"
        )
        for env in [*captured, handoff]:
            raw = env.model_dump_json().lower()
            assert email.lower() not in raw
            assert all(part not in raw for part in PHONE_FREE), raw
        assert {e.schema_version for e in captured} == {3}
        assert handoff.schema_version == 2

        own = [d async for d in leads.runtime.db[KEYS].find({"email_hash": email_hash(email)})]
        assert len(own) == 1, "one key per person, however often captured"
        person_id = own[0]["person_id"]
        assert {e.payload["sealed_person"]["person_id"] for e in captured} == {person_id}
        assert handoff.payload["sealed_contact"]["person_id"] == person_id
        issued = await keys.wait_for(
            lambda _: (
                [e for e in keys.envelopes("lead.person_key_issued") if e.partition_key == person_id] or None
            ),
            what="the lead's key on crm.leads.person-keys",
        )
        assert len(issued) == 1
        # v2: the person's e-mail hash with the key, which sales stores with its copy
        assert (issued[0].schema_version, issued[0].payload["email_hash"]) == (2, email_hash(email))

        opened = await opened_payload(leads.runtime.db, captured[0])
        assert (opened["email"], opened["name"]) == (email, NAME)
        contact = (await opened_payload(leads.runtime.db, handoff))["contact"]
        assert (contact["email"], contact["name"]) == (email, NAME)

        await _erase(leads, kafka_bootstrap, email)

        async def key_gone() -> bool:
            return await leads.runtime.db[KEYS].count_documents({"person_id": person_id}) == 0

        await eventually(key_gone, what="the lead's key destroyed by the erasure")
        shredded = await keys.wait_for(
            lambda _: (
                [e for e in keys.envelopes("lead.person_key_shredded") if e.partition_key == person_id]
                or None
            ),
            what="the key's shredding on crm.leads.person-keys",
        )
        assert shredded[0].payload["person_id"] == person_id
        rows = {"topic": LEADS_PERSON_KEYS, "event_type": "lead.person_key_issued", "key": person_id}
        assert await leads.runtime.db["outbox"].count_documents(rows) == 0, "the key's outbox row went too"
    finally:
        for reader in (events, handoffs, keys):
            await reader.stop()


async def _erase(leads: Any, kafka_bootstrap: str, email: str) -> None:
    request = ErasureRequestedV1(
        request_id=f"er-{uuid.uuid4().hex[:12]}",
        email_hash=email_hash(email),
        record_ids=[],
        requested_at=datetime.now(UTC),
    )
    await produce_envelope(
        kafka_bootstrap,
        GATEWAY_ERASURE_REQUESTS,
        envelope_for(request, source="gateway", correlation_id=request.request_id),
    )


async def test_a_captured_person_s_key_stays_home_until_a_handoff_and_erasure_destroys_it(
    leads: Any, kafka_bootstrap: str
) -> None:
    """Nobody opens lead.captured: a bulk capture stores the new people's keys in marketing's
    database and puts none on the key topic; erasing one of them destroys that key alone."""
    tag = uuid.uuid4().hex[:8]
    ada, bob = f"ada-{tag}@example.com", f"bob-{tag}@example.com"
    body = {
        "leads": [
            {
                "email": e,
                "name": n,
                "company": "Engines",
                "source_channel": "import",
                "consent": {"marketing_email": True},
            }
            for e, n in ((ada, "Ada Bulk"), (bob, "Bob Bulk"))
        ]
    }
    r = await leads.client.post("/leads/bulk", json=body, headers=auth_headers(["marketing"], "mia"))
    assert r.status_code == 200, r.text
    hashes = {"email_hash": {"$in": [email_hash(ada), email_hash(bob)]}}
    keys = {d["email_hash"]: d async for d in leads.runtime.db[KEYS].find(hashes)}
    assert [k["shared"] for k in keys.values()] == [False, False]
    ada_id, bob_id = keys[email_hash(ada)]["person_id"], keys[email_hash(bob)]["person_id"]
    outbox = leads.runtime.db["outbox"]
    issued = {"event_type": "lead.person_key_issued"}
    assert await outbox.count_documents({**issued, "key": {"$in": [ada_id, bob_id]}}) == 0
    assert (
        await outbox.count_documents({"events": {"$elemMatch": {**issued, "key": {"$in": [ada_id, bob_id]}}}})
        == 0
    )

    await _erase(leads, kafka_bootstrap, ada)

    async def shredded() -> bool:
        # A row of its own, or an item of the erasure consumer's batch row (its record's events
        # share one row: crm_platform.consumer, a record stored alone).
        record = {"event_type": "lead.person_key_shredded", "key": ada_id}
        return await outbox.count_documents({"$or": [record, {"events": {"$elemMatch": record}}]}) == 1

    await eventually(shredded, what="the erased person's key shredded")
    assert await leads.runtime.db[KEYS].count_documents({"person_id": ada_id}) == 0
    assert await leads.runtime.db[KEYS].count_documents({"person_id": bob_id}) == 1


async def test_an_erased_bulk_captured_lead_is_gone_from_its_audit_entries(
    leads: Any, kafka_bootstrap: str
) -> None:
    """A bulk batch's entry names its leads (audit.inserts_named): an erased lead's insert reads
    back from the erased lead, so neither its e-mail nor its name is in its audit entries."""
    name = f"Erasable {uuid.uuid4().hex[:6]}"
    email = f"erasable-{uuid.uuid4().hex[:10]}@example.com"
    first = {"name": name, "email": email, "source_channel": "web_form", "consent": {"marketing_email": True}}
    body = {"leads": [first, {**first, "email": f"kept-{uuid.uuid4().hex[:10]}@example.com"}]}
    r = await leads.client.post("/leads/bulk", json=body, headers=auth_headers(["marketing"], "mia"))
    assert r.status_code == 200, r.text
    lead_id = r.json()["results"][0]["lead"]["id"]
    auditor = auth_headers(["auditor"], "aud")

    async def read() -> str:
        params = {"record_type": "leads", "record_id": lead_id}
        got = await leads.client.get("/audit", params=params, headers=auditor)
        assert got.status_code == 200, got.text
        return got.text.lower()

    assert email in await read()
    await _erase(leads, kafka_bootstrap, email)

    async def erased() -> bool:
        text = await read()
        return email not in text and name.lower() not in text

    await eventually(erased, what="the erased lead's e-mail and name gone from its audit entries")
