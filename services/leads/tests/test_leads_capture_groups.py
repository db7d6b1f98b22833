"""Captures sent at once share transactions (leads.capture_groups), each with its own effects.

Against the real mongod: eight ``POST /leads`` at once reach the database in fewer lead writes
than captures (MongoDB's profiler counts them; no timing), and each request still gets its own
verdict, its own ``lead.captured`` (sealed: no plaintext email in the outbox), and its own
audit entry naming its own user and request id. Two captures of one email at once: one
creates, the other merges into it.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, TypeAlias

import httpx
import pytest
from crm_platform import audit
from crm_platform.audit import AUDIT_LOG
from crm_platform.mongo import BATCH_EVENTS, OUTBOX, row_items
from crm_platform.testing import auth_headers
from leads.store import LEADS

pytestmark = pytest.mark.integration
Leads: TypeAlias = Any  # conftest.Leads (conftest is not importable in importlib mode)

USERS = [("marketing", "mia"), ("marketing_manager", "max")]


def body_for(email: str) -> dict[str, Any]:
    return {
        "name": "Ada Lovelace",
        "email": email,
        "source_channel": "web_form",
        "consent": {"marketing_email": True},
    }


async def capture_at_once(leads: Leads, emails: list[str]) -> tuple[list[httpx.Response], list[str]]:
    """POST each email at once, by alternating users, each with its own request id."""
    request_ids = [f"group-{uuid.uuid4().hex[:16]}" for _ in emails]
    posts = [
        leads.client.post(
            "/leads",
            json=body_for(email),
            headers={**auth_headers([role], user), "X-Request-Id": rid},
        )
        for email, (role, user), rid in zip(emails, USERS * len(emails), request_ids, strict=False)
    ]
    return list(await asyncio.gather(*posts)), request_ids


async def lead_writes(leads: Leads, emails: list[str]) -> tuple[list[httpx.Response], list[str], int]:
    """The answers, request ids, and how many write commands reached the leads collection."""
    db = leads.runtime.db
    await db["system.profile"].drop()
    await db.command({"profile": 2})
    try:
        answers, request_ids = await capture_at_once(leads, emails)
    finally:
        await db.command({"profile": 0})
    writes = await db["system.profile"].count_documents(
        {"ns": f"{db.name}.{LEADS}", "op": {"$in": ["insert", "update"]}}
    )
    writes += await db["system.profile"].count_documents(
        {"ns": f"{db.name}.{LEADS}", "command.findAndModify": {"$exists": True}}
    )
    await db["system.profile"].drop()
    return answers, request_ids, writes


async def test_captures_at_once_share_transactions_and_keep_their_own_effects(leads: Leads) -> None:
    await leads.capture()  # caches warm: the eight below reach the handler together
    emails = [leads.unique_email("group") for _ in range(8)]
    answers, request_ids, writes = await lead_writes(leads, emails)

    assert [r.status_code for r in answers] == [201] * 8, [r.text for r in answers]
    assert writes < 8, f"{writes} lead writes for 8 captures at once: they were not grouped"
    ids = [r.json()["lead"]["id"] for r in answers]
    assert [r.json()["lead"]["email"] for r in answers] == emails
    assert len(set(ids)) == 8

    db = leads.runtime.db
    for lead_id, rid, (_, user) in zip(ids, request_ids, USERS * 4, strict=True):
        # As every read shows it: one user's captures may share one stored batch entry, each
        # record still read back as its own entry with its own request (audit.with_cause).
        entries = (await audit.history(db, LEADS, lead_id, limit=10)).items
        assert len(entries) == 1, entries
        assert entries[0]["action"] == "insert"
        assert entries[0]["request_id"] == rid, (
            "each capture's entry names its own request",
            entries,
            ids.index(lead_id),
        )
        assert entries[0]["actor"]["username"] == user, "and its own user"

    rows = (
        await db[OUTBOX]
        .find({"$or": [{"key": {"$in": ids}}, {f"{BATCH_EVENTS}.key": {"$in": ids}}]})
        .to_list()
    )
    events = [item for row in rows for item in row_items(row) if item["key"] in ids]
    assert sorted(e["key"] for e in events if e["event_type"] == "lead.captured") == sorted(ids)
    for row in rows:
        assert not any(email in str(row) for email in emails), "events leave sealed, no plaintext email"


async def test_two_captures_of_one_email_at_once_create_then_merge(leads: Leads) -> None:
    await leads.capture()
    twice = leads.unique_email("twice")
    emails = [
        leads.unique_email("group"),
        twice,
        leads.unique_email("group"),
        twice,
        leads.unique_email("group"),
    ]
    answers, _ = await capture_at_once(leads, emails)

    assert [r.status_code for r in answers] == [201, 201, 201, 200, 201], [r.text for r in answers]
    first, second = answers[1].json(), answers[3].json()
    assert second["merged"] is True
    assert first["lead"]["id"] == second["lead"]["id"]
    assert second["lead"]["touch_count"] == 2
    entries = (
        await leads.runtime.db[AUDIT_LOG].find({"record.id": first["lead"]["id"]}).sort("at", 1).to_list()
    )
    assert [e["action"] for e in entries] == ["insert", "update"], "one entry per capture"
