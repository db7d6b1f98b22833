"""Marketing's events and the person on the log (issue 9, crypto-shredding; crm_platform.shredding),
on the real broker and mongod. ``lead.captured`` v3 carries stand-ins of the lead and nothing
sealed (nobody opens it: docs/governance.md section 3, the twenty-first session's decision), so a
capture, a bulk capture or an import makes no person key; ``lead.qualified`` v2 holds the contact
sealed, under the person's key made at their first qualification and published on
``crm.leads.person-keys`` with it; the key opens what was sealed; erasure destroys it and
publishes its shredding under the same record key, and a person never qualified is erased with
no key to shred."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from crm_contracts import Envelope, envelope_for
from crm_contracts.events.common import SEALED_NAME, sealed_email
from crm_contracts.events.governance import ErasureRequestedV1
from crm_contracts.topics import GATEWAY_ERASURE_REQUESTS, LEAD_QUALIFIED, LEADS_EVENTS, LEADS_PERSON_KEYS
from crm_platform.pseudonym import email_hash
from crm_platform.shredding import KEYS
from crm_platform.testing import TopicReader, auth_headers, eventually, opened_payload, produce_envelope

NAME = "Grace Hopper"
PHONE_FREE = ("grace", "hopper")


def _mine(reader: TopicReader, event_type: str, lead_id: str) -> list[Envelope]:
    return [e for e in reader.envelopes(event_type) if e.partition_key == lead_id]


def _assert_no_person(envelopes: list[Envelope], email: str) -> None:
    for env in envelopes:
        raw = env.model_dump_json().lower()
        assert email.lower() not in raw
        assert all(part not in raw for part in PHONE_FREE), raw


def _assert_stand_ins_of_the_lead(captured: list[Envelope], lead_id: str) -> None:
    for env in captured:
        assert env.schema_version == 3
        assert "sealed_person" not in env.payload, "nothing sealed: nobody opens lead.captured"
        assert (env.payload["email"], env.payload["name"]) == (sealed_email(lead_id), SEALED_NAME)


async def test_a_captured_person_is_on_the_log_as_stand_ins_and_keyed_at_the_first_qualification(
    leads: Any, kafka_bootstrap: str
) -> None:
    email = f"grace-{uuid.uuid4().hex[:10]}@example.com"
    owned = {"email_hash": email_hash(email)}
    events = await TopicReader(kafka_bootstrap, LEADS_EVENTS).start()
    handoffs = await TopicReader(kafka_bootstrap, LEAD_QUALIFIED).start()
    keys = await TopicReader(kafka_bootstrap, LEADS_PERSON_KEYS).start()
    try:
        lead = (await leads.capture(email=email, name=NAME))["lead"]
        again = await leads.capture(email=email.upper(), name=NAME)
        assert (again["lead"]["id"], again["merged"]) == (lead["id"], True)
        assert await leads.runtime.db[KEYS].count_documents(owned) == 0, "no key for a capture"

        out = await leads.behave(lead["id"], "form_submit", "trial_signup")
        assert out["qualified_now"], out
        after = await leads.capture(email=email, name=NAME)  # captured again once qualified
        assert after["merged"] is True

        def three(_: list[Any]) -> list[Envelope] | None:
            found = _mine(events, "lead.captured", lead["id"])
            return found if len(found) == 3 else None

        captured = await events.wait_for(three, what="the three lead.captured of the lead")
        assert [e.payload["merged"] for e in captured] == [False, True, True]
        [handoff] = await handoffs.wait_for(
            lambda _: _mine(handoffs, "lead.qualified", lead["id"]) or None, what="lead.qualified"
        )
        _assert_no_person([*captured, handoff], email)
        _assert_stand_ins_of_the_lead(captured, lead["id"])
        assert handoff.schema_version == 2

        own = [d async for d in leads.runtime.db[KEYS].find(owned)]
        assert len(own) == 1, "one key, made by the qualification"
        assert own[0]["shared"] is True
        person_id = own[0]["person_id"]
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

        contact = (await opened_payload(leads.runtime.db, handoff))["contact"]
        assert (contact["email"], contact["name"]) == (email, NAME)

        request_id = await _erase(leads, kafka_bootstrap, email)
        assert await _erasure_events(leads, request_id) == [
            ("erasure.erased", 1),
            ("lead.person_key_shredded", None),
        ]
        assert await leads.runtime.db[KEYS].count_documents({"person_id": person_id}) == 0
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


async def _erase(leads: Any, kafka_bootstrap: str, email: str) -> str:
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
    return request.request_id


async def _erasure_events(leads: Any, request_id: str) -> list[tuple[str, int | None]]:
    """The events marketing's erasure of the request stored (its one transaction: the first
    pass's report and the shreddings together; the confirmation follows its recheck), each with
    the records it says were erased, once committed."""
    outbox = leads.runtime.db["outbox"]
    mine = {"envelope.correlation_id": request_id}
    query = {"$or": [mine, {"events": {"$elemMatch": mine}}]}

    async def confirmed() -> list[tuple[str, int | None]] | None:
        items: list[dict[str, Any]] = []
        async for row in outbox.find(query):
            items += [i for i in row.get("events", [row]) if i["envelope"]["correlation_id"] == request_id]
        found = sorted((i["event_type"], i["envelope"]["payload"].get("records_erased")) for i in items)
        return found if any(t == "erasure.erased" for t, _ in found) else None

    done: list[tuple[str, int | None]] = await eventually(confirmed, what=f"erasure {request_id} committed")
    return done


async def test_a_person_only_captured_has_no_key_and_is_erased_with_none_to_shred(
    leads: Any, kafka_bootstrap: str
) -> None:
    """Nobody opens lead.captured: a bulk capture (as a single one and an import) makes no key and
    puts none on the key topic; erasing one of its people erases the lead, confirms, and has no
    key to destroy."""
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
    ada_id, bob_id = (item["lead"]["id"] for item in r.json()["results"])
    hashes = {"email_hash": {"$in": [email_hash(ada), email_hash(bob)]}}
    assert await leads.runtime.db[KEYS].count_documents(hashes) == 0
    outbox = leads.runtime.db["outbox"]
    ids = {"$in": [ada_id, bob_id]}
    rows = outbox.find({"$or": [{"key": ids}, {"events.key": ids}]})
    bulk = [i async for row in rows for i in row.get("events", [row])]
    captured = [Envelope.model_validate(i["envelope"]) for i in bulk if i["event_type"] == "lead.captured"]
    assert {e.partition_key for e in captured} == {ada_id, bob_id}
    _assert_no_person(captured, ada)
    _assert_no_person(captured, bob)
    assert "bulk" not in str([e.payload for e in captured]).lower()
    for env in captured:
        _assert_stand_ins_of_the_lead([env], env.partition_key)
    assert not [i for i in bulk if i["event_type"] == "lead.person_key_issued"]

    request_id = await _erase(leads, kafka_bootstrap, ada)
    assert await _erasure_events(leads, request_id) == [("erasure.erased", 1)], "no key to shred"
    erased, kept = await leads.lead(ada_id), await leads.lead(bob_id)
    assert (erased["email"] != ada, kept["email"]) == (True, bob)


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
