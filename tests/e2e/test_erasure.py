"""Erasure, "right to be forgotten" (issue 9), across the whole platform as separate processes.

A person is captured by marketing, qualified, handed to sales, won and onboarded by customer
success (the e2e journey); sales also keeps them as a contact with a phone number, and a ticket
mentions them by name and e-mail. An administrator files an erasure request at the
gateway; every department (leads, sales, service desk, analytics) confirms; then the person's
e-mail, name and phone are gone from every service's own read API (records, histories, audit
logs) and from every collection of every service's database. Filing the same request again
changes nothing and each department still confirms it once.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from typing import Any

import pytest
from crm_contracts import Envelope
from crm_contracts.topics import ERASURE_CONFIRMATIONS, GATEWAY_ERASURE_REQUESTS
from crm_platform.devinfra.journey import Gateway, run_journey, until
from crm_platform.devinfra.launcher import Platform
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

    return until(done, timeout=90, what=f"every department to confirm erasure {request_id}")


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

    _assert_databases_clean(platform, person)

    # The request replayed (the same event again on the log), then the same person filed again:
    # the replay is dropped by every department's ledger, the new request finds nothing left.
    asyncio.run(_replay(platform.kafka_bootstrap, request["id"]))
    again = _file(gw, email)
    second = _completed(gw, again["id"])
    assert all(d["records_erased"] == 0 for d in second["departments"]), second
    # One partition: every department handled the replay before the second request.
    confirmations = asyncio.run(_confirmations(platform.kafka_bootstrap, request["id"], again["id"]))
    assert sorted(confirmations) == sorted(confirmed), "each department confirmed the first request once"


def _of(reader: TopicReader, event_type: str, request_id: str) -> list[Envelope]:
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


async def _confirmations(bootstrap: str, first: str, second: str) -> list[str]:
    """Who confirmed ``first``, read up to the confirmations of ``second`` (filed after the replay)."""
    reader = await TopicReader(bootstrap, ERASURE_CONFIRMATIONS, from_beginning=True).start()
    try:
        await reader.wait_for(
            lambda _: len(_of(reader, "erasure.completed", second)) >= 4 or None,
            what="the confirmations of the second request",
        )
        return [e.source for e in _of(reader, "erasure.completed", first)]
    finally:
        await reader.stop()


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
