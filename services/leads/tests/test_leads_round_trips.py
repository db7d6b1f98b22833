"""What one capture (``POST /leads``) costs in database operations (issue 12), counted with
MongoDB's profiler on this module's own database: no timing, the operations themselves.

Before: the capture's transaction read the lead by email, inserted it, read the person's key,
inserted it, then the audit entry and the outbox row (six writes and reads, then the commit).
Then the dedupe lookup and the insert became one upsert that only sets fields on insert (a
stored lead is answered unchanged and merges), and so did the person's key: four. Now a capture
makes no key at all (``lead.captured`` carries stand-ins and nothing sealed: docs/governance.md
section 3), the key is made at the person's first qualification: three.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import pytest
from crm_platform.audit import AUDIT_LOG, AuditedCollection
from crm_platform.mongo import HANDOFFS_SENT, OUTBOX
from crm_platform.pseudonym import email_hash
from crm_platform.shredding import KEYS
from crm_platform.testing import audit_entries, auth_headers, eventually
from leads.store import LEADS

pytestmark = pytest.mark.integration
Leads: TypeAlias = Any  # conftest.Leads (conftest is not importable in importlib mode)

MARKETING = auth_headers(["marketing"], "mia")
AUDITOR = auth_headers(["auditor"], "aud.itor")


async def operations_of(
    leads: Leads, body: dict[str, Any], path: str = "/leads"
) -> tuple[int, list[tuple[str, str]]]:
    """POST ``body`` (a capture by default); its status and the (collection, command) of every
    operation sent inside its transaction, in order (the profiler's view; the commit is on
    ``admin``)."""
    db = leads.runtime.db
    await db["system.profile"].drop()
    await db.command({"profile": 2})
    try:
        r = await leads.client.post(path, json=body, headers=MARKETING)
    finally:
        await db.command({"profile": 0})
    assert r.status_code in (200, 201), r.text
    ops = []
    # Inside the transaction: read at its snapshot (the relay's marks and polls read "local").
    async for op in db["system.profile"].find({"readConcern.level": "snapshot"}).sort("ts", 1):
        collection = op["ns"].split(".", 1)[1]
        ops.append((collection, op["op"] if op["op"] != "command" else next(iter(op["command"]))))
    await db["system.profile"].drop()
    return r.status_code, ops


def without_audit(ops: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The operations but the transaction's one audit entry, written after the record's own
    writes and beside the key's and the outbox's (crm_platform.mongo.side_by_side: mongod
    takes the two in either order)."""
    names = [op[0] for op in ops]
    assert names.count(AUDIT_LOG) == 1, ops
    assert names.index(AUDIT_LOG) > max(i for i, name in enumerate(names) if name == LEADS), ops
    return [op for op in ops if op[0] != AUDIT_LOG]


def body_for(email: str, name: str = "Ada Lovelace") -> dict[str, Any]:
    return {"name": name, "email": email, "source_channel": "web_form", "consent": {"marketing_email": True}}


async def test_a_new_lead_is_looked_up_and_stored_in_one_operation_and_no_key_made(
    leads: Leads,
) -> None:
    email = leads.unique_email("trips")
    status, ops = await operations_of(leads, body_for(email))
    assert status == 201
    assert without_audit(ops) == [
        (LEADS, "findAndModify"),  # the dedupe lookup and the insert
        (OUTBOX, "insert"),  # lead.captured with stand-ins: no person key looked up or made
    ]
    assert await leads.runtime.db[KEYS].count_documents({"email_hash": email_hash(email)}) == 0
    stored = await leads.runtime.db[LEADS].find_one({"email": email})
    assert stored is not None
    assert stored["name"] == "Ada Lovelace"
    assert stored["touch_count"] == 1


async def test_a_known_email_merges_the_stored_lead_unchanged_by_the_lookup(leads: Leads) -> None:
    email = leads.unique_email("trips")
    await operations_of(leads, body_for(email))
    status, ops = await operations_of(leads, body_for(email.upper(), name="Someone Else"))
    assert status == 200
    assert without_audit(ops) == [
        (LEADS, "findAndModify"),  # answered the stored lead, wrote nothing
        (LEADS, "update"),  # the merge
        (OUTBOX, "insert"),  # no person key: the merged capture seals nothing either
    ]
    [stored] = [d async for d in leads.runtime.db[LEADS].find({"email": email})]
    assert stored["name"] == "Ada Lovelace", "a filled field is kept by a merge"
    assert stored["touch_count"] == 2
    assert await leads.runtime.db[KEYS].count_documents({"email_hash": email_hash(email)}) == 0


async def test_a_trackers_batch_reads_its_leads_once_and_writes_them_without_reading_them_again(
    leads: Leads,
) -> None:
    """The batch's leads are read once, remembered as the audit's 'before' states, and written in
    one ``bulk_write`` whose audit entries need no read before or after it (it read them three
    times: the batch, the audit's before and its after; the ninth session's handoff: mongod's
    ``leads`` collection was its largest cost)."""
    ada, bob = [(await leads.capture())["lead"]["id"] for _ in range(2)]
    body = {
        "behaviours": [
            {"lead_id": ada, "behaviour": "form_submit"},
            {"lead_id": bob, "behaviour": "page_view"},
            {"lead_id": ada, "behaviour": "trial_signup"},
        ]
    }
    status, ops = await operations_of(leads, body, "/leads/behaviours/bulk")
    assert status == 200
    assert [op for op in ops if op[0] == LEADS] == [(LEADS, "query"), (LEADS, "update"), (LEADS, "update")]
    history = await leads.client.get(f"/leads/{ada}/history", headers=MARKETING)
    [entry] = [e for e in history.json()["items"] if e["action"] == "update"]
    changed = {c["field"]: (c["before"], c["after"]) for c in entry["changes"]}
    assert changed["behaviour_totals"] == ({}, {"form_submit": 1, "trial_signup": 1})
    assert changed["score"] == (0, (await leads.lead(ada))["score"])


async def test_a_trackers_batch_writes_each_leads_changed_fields_not_the_whole_lead(
    leads: Leads, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A qualifying batch's save sets the fields the behaviours changed (status, score, totals,
    times, lists), not the whole lead replaced: the lead's identity, consent and touches are
    not encoded, sent and written to the oplog again for every handoff (thirteenth session,
    handoff). The stored lead and its history are as a replacement left them."""
    ada, bob = [(await leads.capture())["lead"]["id"] for _ in range(2)]
    before = {i: await leads.runtime.db[LEADS].find_one({"_id": i}) for i in (ada, bob)}
    sent: list[Any] = []
    real = AuditedCollection.bulk_write

    async def spy(self: AuditedCollection, requests: Any, *args: Any, **kw: Any) -> Any:
        if self.name == LEADS:
            sent.extend(requests)
        return await real(self, requests, *args, **kw)

    monkeypatch.setattr(AuditedCollection, "bulk_write", spy)
    body = {
        "behaviours": [
            {"lead_id": i, "behaviour": b} for i in (ada, bob) for b in ("form_submit", "trial_signup")
        ]
    }
    r = await leads.client.post("/leads/behaviours/bulk", json=body, headers=MARKETING)
    assert r.status_code == 200, r.text

    assert [type(op).__name__ for op in sent] == ["UpdateOne", "UpdateOne"], "no whole lead replaced"
    for op in sent:
        assert set(op._doc) == {"$set"}
        assert not set(op._doc["$set"]) & {
            "email",
            "name",
            "consent",
            "touches",
            "created_at",
            "origin_channel",
        }
    for lead_id in (ada, bob):
        stored = await leads.runtime.db[LEADS].find_one({"_id": lead_id})
        assert stored is not None
        assert stored["status"] == "qualified"
        unchanged = {k: v for k, v in before[lead_id].items() if k not in sent[0]._doc["$set"]}
        assert {k: v for k, v in stored.items() if k in unchanged} == unchanged
        history = (await leads.client.get(f"/leads/{lead_id}/history", headers=MARKETING)).json()["items"]
        [update] = [e for e in history if e["action"] == "update"]
        changed = {c["field"]: (c["before"], c["after"]) for c in update["changes"]}
        assert changed["status"] == ("new", "qualified")


async def test_a_trackers_batch_writes_one_audit_entry_for_its_behaviours_and_one_for_its_leads(
    leads: Leads,
) -> None:
    """A tracker's batch of 100 qualifying behaviours wrote 200 audit entries (one per behaviour,
    one per lead), each with its four index entries: now one for the batch's behaviours and one
    for its leads, each naming every record with its own values (eleventh session, handoff).
    Each lead's history and each behaviour's still read as entries of their own."""
    ids = [(await leads.capture())["lead"]["id"] for _ in range(3)]
    body = {
        "behaviours": [{"lead_id": i, "behaviour": b} for i in ids for b in ("form_submit", "trial_signup")]
    }
    r = await leads.client.post("/leads/behaviours/bulk", json=body, headers=MARKETING)
    assert r.status_code == 200, r.text
    assert all(x["qualified_now"] for x in r.json()["results"][1::2])
    stored = await audit_entries(leads.runtime.db, r)
    assert sorted((e["record"]["type"], len(e["record"]["id"])) for e in stored) == [
        ("behaviours", 6),
        (LEADS, 3),
    ], "one entry per record type for the whole batch (nine entries before)"
    [named] = [e for e in stored if e["record"]["type"] == "behaviours"]
    assert all(set(x) == {"id"} for x in named["records"]), "the behaviours named, not copied"
    for lead_id in ids:
        history = (await leads.client.get(f"/leads/{lead_id}/history", headers=MARKETING)).json()["items"]
        [update] = [e for e in history if e["action"] == "update"]
        changed = {c["field"]: (c["before"], c["after"]) for c in update["changes"]}
        assert changed["status"] == ("new", "qualified")
        assert changed["behaviour_totals"] == ({}, {"form_submit": 1, "trial_signup": 1})
    behaviour_ids = [x["behaviour_id"] for x in r.json()["results"]]
    audit = await leads.client.get(
        "/audit", params={"record_type": "behaviours", "record_id": behaviour_ids[3]}, headers=AUDITOR
    )
    assert audit.status_code == 200, audit.text
    [entry] = audit.json()["items"]
    assert {"field": "lead_id", "before": None, "after": ids[1]} in entry["changes"]
    assert {"field": "behaviour", "before": None, "after": "trial_signup"} in entry["changes"]


async def test_a_handoff_marks_its_person_key_shared_with_the_lookup_that_finds_it(leads: Leads) -> None:
    """The handoff's transaction finds (here: makes, the person's first qualification) the
    person's key and marks it shared in ONE upsert
    (answered as it was: not shared yet, so its key record goes out with the handoff), beside
    the lead's write, before the handoff is emitted: after the emit only the outbox insert and
    the audit entry (beside each other) come before the commit (the key's lookup was a round
    trip of its own there, between the emit and the outbox insert: twentieth session,
    p99leads). No second write of the key (an ``update`` of it was a round trip on the
    handoff's latency). Nor a ``handoffs_sent`` record: the relay writes it once the handoff is
    published, with its mark (one round trip fewer before the commit, the relay's read and the
    publish)."""
    lead = (await leads.capture(email=leads.unique_email("shared")))["lead"]["id"]
    await leads.behave(lead, "form_submit")
    status, ops = await operations_of(leads, {"behaviour": "trial_signup"}, f"/leads/{lead}/behaviours")
    assert status == 201
    assert sorted(ops[-2:]) == [
        (AUDIT_LOG, "insert"),
        (OUTBOX, "insert"),  # the key record and the handoff
    ], "after the emit: the outbox and the audit entry (mongo.side_by_side), nothing else"
    assert sorted(ops[-4:-2]) == [
        (LEADS, "update"),
        (KEYS, "findAndModify"),  # made, and marked shared, beside the lead's write
    ]
    assert [op for op in ops if op[0] == KEYS] == [(KEYS, "findAndModify")]
    [row] = [r async for r in leads.runtime.db[OUTBOX].find({"events.key": lead})]
    assert [item["event_type"] for item in row["events"]] == [
        "lead.behaviour_recorded",
        "lead.person_key_issued",
        "lead.qualified",
    ], "the behaviour's event, the key record and the handoff share ONE outbox row, in order"
    assert row["count"] == 3
    sent = leads.runtime.db[HANDOFFS_SENT]
    handoff = await eventually(lambda: sent.find_one({"key": lead}))
    assert handoff["handoff"] == "lead-qualified"
    stored = await leads.lead(lead)
    key = await leads.runtime.db[KEYS].find_one({"email_hash": email_hash(stored["email"])})
    assert key["shared"] is True
    outbox = leads.runtime.db[OUTBOX]
    naming = {"$or": [{"key": key["person_id"]}, {"events.key": key["person_id"]}]}
    records = [r async for r in outbox.find(naming)]
    assert len(records) == 1, "its key record went out once"
