"""Erasure, "right to be forgotten" (issue 9), across the whole platform as separate processes.

A person is captured by marketing, qualified, handed to sales, won and onboarded by customer
success (the e2e journey); sales also keeps them as a contact with a phone number, and a ticket
mentions them by name and e-mail. An administrator files an erasure request at the
gateway; every department that stores people (leads, sales, service desk) reports its first
pass, then confirms after its recheck (analytics, which keeps none, at once); then the person's
e-mail, name and phone are gone from every service's own read API (records, histories, audit
logs) and from every collection of every service's database. Filing the same request again
changes nothing and each department still confirms it once.

Sales' inbox item came from a sealed handoff, so it names the person by the held key it was
opened with (not by their hash): the request finds it through that key, and erases it.

The log too (crypto-shredding, crm_platform.shredding): every topic read from its beginning
holds none of the person's values in any record's bytes (key, value, headers), the latest record
of each of the person's keys on the key topics is its shredding (the embedded broker does not
compact: on Kafka, compaction then leaves only that record), and no database keeps a key of
theirs: what their sealed events carry can no longer be opened by anyone.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from typing import Any

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from crm_contracts import Envelope
from crm_contracts.topics import (
    DEAL_WON,
    ERASURE_CONFIRMATIONS,
    GATEWAY_ERASURE_REQUESTS,
    LEAD_QUALIFIED,
    LEADS_EVENTS,
    LEADS_PERSON_KEYS,
    SALES_PERSON_KEYS,
    TOPICS,
)
from crm_platform.devinfra.journey import Gateway, run_journey, until
from crm_platform.devinfra.launcher import Platform
from crm_platform.kafka import make_consumer
from crm_platform.pseudonym import email_hash
from crm_platform.shredding import ZERO_KEY
from crm_platform.testing import TopicReader, produce_envelope
from pymongo import MongoClient
from pymongo.database import Database

pytestmark = pytest.mark.e2e

DEPARTMENT_DATABASES = ("leads", "sales", "service_desk", "analytics", "gateway")
# Bookkeeping that keeps request bodies and responses, not records: Idempotency-Key replays
# expire after CRM_IDEMPOTENCY_TTL_HOURS (docs/governance.md, "What erasure does not reach").
NOT_RECORDS = ("idempotency_keys",)


def _file(gw: Gateway, email: str) -> dict[str, Any]:
    return dict(gw.call("admin", "POST", "/erasure-requests", {"email": email}, expect=(202,)))


def _completed(gw: Gateway, request_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        request = gw.get("admin", f"/erasure-requests/{request_id}")
        return dict(request) if request["state"] == "completed" else None

    # A deadline, not a timing: each confirmation follows its department's recheck (2 s here), and
    # on a long-lived test broker each department first works through every earlier request.
    return until(done, timeout=180, what=f"every department to confirm erasure {request_id}")


def _assert_absent(where: str, payload: Any, person: tuple[str, ...]) -> None:
    text = json.dumps(payload, default=str).lower()
    for value in person:
        assert value.lower() not in text, f"{value!r} still in {where}"


def test_an_erased_person_is_gone_from_every_department(gw: Gateway, platform: Platform) -> None:
    suffix = uuid.uuid4().hex[:6]
    name = f"Erin Forgotten{suffix}"
    journey = run_journey(gw, f"erasure-{suffix}", name=name, timeout=60)
    email = gw.get("maria", f"/api/leads/leads/{journey.lead_id}")["email"]
    phone = f"+49 30 {secrets.randbelow(10**7):07d}"
    contact = gw.call(
        journey.owner,
        "POST",
        "/api/sales/contacts",
        {"email": email, "name": name, "source": "referral", "phone": phone},
    )
    ticket = gw.call(
        "sven",
        "POST",
        "/api/service-desk/tickets",
        {
            "account_id": journey.account_id,
            "subject": f"{name} cannot log in",
            # What the service desk holds of the person (from the won deal) is their name and
            # e-mail: those are what it can find in free text (it never had the phone).
            "request": f"{name} ({email}) asks for a password reset",
            "priority": "low",
        },
    )
    person = (email, name, phone)
    # The handoff reached sales sealed: its inbox item names the person by the held key it was
    # opened with, not by their hash (the erasure finds it as hash -> held key -> item).
    digest = email_hash(email)
    named_by = _inbox_person_hashes(platform, journey.lead_id)
    assert named_by, "the item names its person"
    assert all(h.startswith("held:leads:") for h in named_by), named_by
    assert digest not in named_by

    request = _file(gw, email)
    assert request["email_hash"] is not None
    _assert_absent("the erasure request", request, person)
    done = _completed(gw, request["id"])
    confirmed = {d["department"]: d for d in done["departments"]}
    assert set(confirmed) == {"leads", "sales", "service-desk", "analytics"}
    assert all(d["state"] == "confirmed" and d["duration_ms"] >= 0 for d in confirmed.values())
    assert confirmed["leads"]["records_erased"] >= 1
    assert confirmed["sales"]["records_erased"] >= 3  # inbox item, opportunity, contact
    assert confirmed["service-desk"]["records_erased"] >= 2  # the account and the ticket
    assert confirmed["analytics"]["records_erased"] == 0  # it keeps no personal data
    assert done["duration_ms"] >= max(d["duration_ms"] for d in confirmed.values())
    for department in ("leads", "sales", "service-desk"):  # first pass, then the recheck's confirmation
        shown = confirmed[department]
        assert shown["erased_at"] is not None, shown
        assert shown["recheck_due_at"] is not None, shown
        assert shown["late_records"] == 0, shown  # no late writer here
    assert confirmed["analytics"]["recheck_due_at"] is None
    assert done["rechecks_due_by"] is None

    ticket_id = ticket.get("id", ticket.get("ticket_id"))
    reads = {
        "leads": [
            ("maria", f"/api/leads/leads/{journey.lead_id}"),
            ("maria", f"/api/leads/leads/{journey.lead_id}/history"),
        ],
        "sales": [
            ("sam", f"/api/sales/inbox/{journey.lead_id}"),
            (journey.owner, f"/api/sales/opportunities/{journey.opportunity_id}"),
            (journey.owner, f"/api/sales/contacts/{contact['id']}"),
            (journey.owner, f"/api/sales/contacts/{contact['id']}/history"),
        ],
        "service-desk": [
            ("sven", f"/api/service-desk/accounts/{journey.account_id}"),
            ("sven", f"/api/service-desk/tickets/{ticket_id}"),
        ],
    }
    for service, calls in reads.items():
        for user, path in calls:
            _assert_absent(path, gw.get(user, path), person)
        audit = gw.get("admin", f"/api/{service}/audit?limit=500")
        _assert_absent(f"{service}'s audit log", audit, person)
    lead = gw.get("maria", f"/api/leads/leads/{journey.lead_id}")
    assert lead["email"].endswith("@erased.example")
    assert lead["name"].startswith("Erased person ")
    assert lead["status"] == "accepted", "the record stays, only the person goes"

    assert _inbox_person_hashes(platform, journey.lead_id) == [], "the sealed item was erased"
    _assert_databases_clean(platform, person)
    _assert_log_clean(platform, journey.lead_id, journey.opportunity_id, person)

    # The request replayed (the same event again on the log), then the same person filed again:
    # the replay is dropped by every department's ledger, the new request finds nothing left.
    asyncio.run(_replay(platform.kafka_bootstrap, request["id"]))
    again = _file(gw, email)
    second = _completed(gw, again["id"])
    assert all(d["records_erased"] == 0 for d in second["departments"]), second
    # One partition: every department handled the replay before the second request.
    reports = asyncio.run(_confirmations(platform.kafka_bootstrap, request["id"], again["id"]))
    confirmations = [source for source, kind in reports if kind == "erasure.completed"]
    assert sorted(confirmations) == sorted(confirmed), "each department confirmed the first request once"
    for department in ("leads", "sales", "service-desk"):
        said = [kind for source, kind in reports if source == department]
        assert said == ["erasure.erased", "erasure.completed"], (department, said)


def _of(reader: TopicReader, event_type: str | None, request_id: str) -> list[Envelope]:
    return [e for e in reader.envelopes(event_type) if e.payload.get("request_id") == request_id]


async def _replay(bootstrap: str, request_id: str) -> None:
    reader = await TopicReader(bootstrap, GATEWAY_ERASURE_REQUESTS, from_beginning=True).start()
    try:
        await reader.wait_for(
            lambda _: _of(reader, "erasure.requested", request_id) or None, what="the erasure request"
        )
        (original,) = _of(reader, "erasure.requested", request_id)
    finally:
        await reader.stop()
    await produce_envelope(bootstrap, GATEWAY_ERASURE_REQUESTS, original)


async def _confirmations(bootstrap: str, first: str, second: str) -> list[tuple[str, str]]:
    """Who reported what of ``first`` (source, event type; in the log's order), read up to the
    confirmations of ``second`` (filed after the replay)."""
    reader = await TopicReader(bootstrap, ERASURE_CONFIRMATIONS, from_beginning=True).start()
    try:
        await reader.wait_for(
            lambda _: len(_of(reader, "erasure.completed", second)) >= 4 or None,
            what="the confirmations of the second request",
        )
        return [(e.source, e.event_type) for e in _of(reader, None, first)]
    finally:
        await reader.stop()


Records = list[ConsumerRecord[bytes, bytes]]


async def _read_everything(bootstrap: str) -> Records:
    """Every record of every topic in the table, from the beginning up to the end it has now."""
    consumer = make_consumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()
        partitions = [
            TopicPartition(spec.name, p)
            for spec in TOPICS
            for p in sorted(consumer.partitions_for_topic(spec.name) or [])
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records: Records = []
        behind = {tp for tp in partitions if ends[tp] > 0}
        while behind:
            batch = await consumer.getmany(*behind, timeout_ms=1000)
            for got in batch.values():
                records += got
            behind = {tp for tp in behind if await consumer.position(tp) < ends[tp]}
        return records
    finally:
        await consumer.stop()


def _person_ids(
    records: list[ConsumerRecord[bytes, bytes]], lead_id: str, deal_id: str
) -> dict[str, set[str]]:
    """The person's ids on each key topic, from the sealed events that name them (marketing's
    key: the handoff's; ``lead.captured`` seals nothing, docs/governance.md section 3)."""
    ids: dict[str, set[str]] = {LEADS_PERSON_KEYS: set(), SALES_PERSON_KEYS: set()}
    for record in records:
        if record.topic not in (LEADS_EVENTS, LEAD_QUALIFIED, DEAL_WON) or record.value is None:
            continue
        try:  # the shared test broker also holds other suites' malformed records (the fuzzer's)
            envelope = Envelope.from_bytes(record.value)
        except ValueError:
            continue
        payload = envelope.payload
        if payload.get("lead_id") == lead_id:
            assert payload.get("sealed_person") is None, "lead.captured seals nothing"
            if payload.get("sealed_contact"):
                ids[LEADS_PERSON_KEYS].add(payload["sealed_contact"]["person_id"])
        if payload.get("deal_id") == deal_id:
            ids[SALES_PERSON_KEYS] |= {s["person_id"] for s in payload.get("sealed_contacts", [])}
    return ids


def _assert_log_clean(platform: Platform, lead_id: str, deal_id: str, person: tuple[str, ...]) -> None:
    """What a replay of the whole log after the erasure shows of the person: nothing readable."""

    def shredded() -> tuple[Records, dict[str, set[str]]] | None:
        records = asyncio.run(_read_everything(platform.kafka_bootstrap))
        ids = _person_ids(records, lead_id, deal_id)
        latest = {(r.topic, r.key): r for r in records if r.topic in ids}  # in offset order: the last wins
        last = [latest.get((topic, pid.encode())) for topic, pids in ids.items() for pid in pids]
        done = all(r is not None and b"person_key_shredded" in (r.value or b"") for r in last)
        return (records, ids) if done else None

    records, ids = until(shredded, timeout=60, what="the person's keys shredded on the log")
    assert ids[LEADS_PERSON_KEYS], "marketing sealed the person under a key of its own"
    assert ids[SALES_PERSON_KEYS], "sales sealed the deal's contact under a key of its own"
    found = []
    for record in records:
        headers = [value for _, value in record.headers or ()]
        raw = b" ".join([record.key or b"", record.value or b"", *headers]).lower()
        found += [f"{record.topic}@{record.offset}: {v}" for v in person if v.lower().encode() in raw]
    assert found == [], "the person's values are on the log in plaintext"
    _assert_no_keys_left(platform, {pid for pids in ids.values() for pid in pids})


def _assert_no_keys_left(platform: Platform, person_ids: set[str]) -> None:
    """No department keeps a key of the person's (owner, holder or outbox row)."""
    left: list[str] = []
    client: MongoClient[dict[str, Any]]
    with MongoClient(platform.mongodb_uri, serverSelectionTimeoutMS=10_000) as client:
        for suffix in DEPARTMENT_DATABASES:
            db: Database[dict[str, Any]] = client[f"{platform.db_prefix}{suffix}"]
            query = {"person_id": {"$in": sorted(person_ids)}, "key": {"$exists": True}}
            left += [f"{suffix}.person_keys: {d['_id']}" for d in db["person_keys"].find(query)]
            ids = sorted(person_ids)
            rows = {"$or": [{"key": {"$in": ids}}, {"events.key": {"$in": ids}}]}
            for row in db["outbox"].find(rows):
                for item in row.get("events", [row]):  # a batch row lists its events
                    key = item["envelope"]["payload"].get("key")
                    if item.get("key") in person_ids and key not in (None, ZERO_KEY):
                        left.append(f"{suffix}.outbox: {item['event_id']}")
    assert left == []


def _inbox_person_hashes(platform: Platform, lead_id: str) -> list[str]:
    """What sales' inbox item of the lead names its person by (``person_hashes``)."""
    client: MongoClient[dict[str, Any]]
    with MongoClient(platform.mongodb_uri, serverSelectionTimeoutMS=10_000) as client:
        item = client[f"{platform.db_prefix}sales"]["inbox"].find_one({"lead_id": lead_id})
    assert item is not None, f"no inbox item of {lead_id}"
    return list(item["person_hashes"])


def _assert_databases_clean(platform: Platform, person: tuple[str, ...]) -> None:
    """No collection of any service's database holds the person's values (the request's hash is
    not personal data on its own; the stand-ins are derived from it)."""
    found: list[str] = []
    client: MongoClient[dict[str, Any]]
    with MongoClient(platform.mongodb_uri, serverSelectionTimeoutMS=10_000) as client:
        for suffix in DEPARTMENT_DATABASES:
            db: Database[dict[str, Any]] = client[f"{platform.db_prefix}{suffix}"]
            for name in db.list_collection_names():
                if name in NOT_RECORDS:
                    continue
                for doc in db[name].find({}):
                    text = json.dumps(doc, default=str).lower()
                    found += [f"{suffix}.{name}: {v}" for v in person if v.lower() in text]
    assert found == []
