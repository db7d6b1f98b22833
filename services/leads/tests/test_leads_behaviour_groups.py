"""Single behaviours sent at once share transactions (leads.behaviour_groups), each with its own
effects.

Against the real mongod: eight single qualifying ``POST /leads/{id}/behaviours`` at once reach
the database in fewer commits than requests (MongoDB's profiler counts the lead writes and the
keys' inserts; no timing), and each request still gets its own answer (201, qualified now), its
own handoff to sales (one ``handoffs_sent`` record and one ``lead.qualified`` each), its own
audit entries naming its own user and request id, and its own Idempotency-Key committed with its
effect and answered when retried. A retry sent among new behaviours is answered from its record
and the new ones are recorded once each.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, TypeAlias

import httpx
import pytest
from crm_platform import audit, shredding
from crm_platform.idempotency import COLLECTION as KEYS
from crm_platform.mongo import HANDOFFS_SENT, OUTBOX, outbox_events_pipeline
from crm_platform.pseudonym import email_hash
from crm_platform.testing import auth_headers, eventually
from leads.store import BEHAVIOURS, LEADS
from pymongo.asynchronous.collection import AsyncCollection

pytestmark = pytest.mark.integration
Leads: TypeAlias = Any  # conftest.Leads (conftest is not importable in importlib mode)

USERS = [("marketing", "mia"), ("marketing_manager", "max")]


async def behave_at_once(
    leads: Leads, lead_ids: list[str], behaviour: str = "trial_signup"
) -> tuple[list[httpx.Response], list[str]]:
    """POST one behaviour for each lead at once, by alternating users, each with its own request id."""
    request_ids = [f"group-{uuid.uuid4().hex[:16]}" for _ in lead_ids]
    posts = [
        leads.client.post(
            f"/leads/{lead_id}/behaviours",
            json={"behaviour": behaviour},
            headers={**auth_headers([role], user), "X-Request-Id": rid},
        )
        for lead_id, (role, user), rid in zip(lead_ids, USERS * len(lead_ids), request_ids, strict=False)
    ]
    return list(await asyncio.gather(*posts)), request_ids


async def profiled(
    leads: Leads, lead_ids: list[str]
) -> tuple[list[httpx.Response], list[str], dict[str, int]]:
    """The answers, request ids, and the write commands that reached each collection."""
    db = leads.runtime.db
    await db["system.profile"].drop()
    await db.command({"profile": 2})
    try:
        answers, request_ids = await behave_at_once(leads, lead_ids)
    finally:
        await db.command({"profile": 0})
    writes = {
        name: await db["system.profile"].count_documents(
            {"ns": f"{db.name}.{name}", "op": {"$in": ["insert", "update"]}}
        )
        for name in (LEADS, BEHAVIOURS, KEYS)
    }
    await db["system.profile"].drop()
    return answers, request_ids, writes


async def new_leads(leads: Leads, n: int) -> list[str]:
    """``n`` leads one trial signup short of qualifying (caches warm: the behaviours at once
    reach the handler together)."""
    ids = [(await leads.capture())["lead"]["id"] for _ in range(n)]
    for lead_id in ids:
        await leads.behave(lead_id, "form_submit")
    return ids


async def test_behaviours_at_once_share_transactions_and_keep_their_own_effects(leads: Leads) -> None:
    ids = await new_leads(leads, 8)
    answers, request_ids, writes = await profiled(leads, ids)
    assert leads.app.state.behaviour_groups.groups >= 1

    assert [r.status_code for r in answers] == [201] * 8, [r.text for r in answers]
    assert all(r.json()["qualified_now"] for r in answers)
    assert [r.json()["lead"]["id"] for r in answers] == ids
    assert writes[BEHAVIOURS] < 8, f"{writes} for 8 behaviours at once: they were not grouped"
    # Each request's key commits with its effect (inserted by the group's transaction, fewer
    # inserts than keys) and its answer is recorded after (one update each).
    recorded = {"path": {"$in": [f"/leads/{i}/behaviours" for i in ids]}, "response.status": 201}
    assert await leads.runtime.db[KEYS].count_documents(recorded) == 16, (
        "8 form submits', 8 trial signups' keys"
    )

    db = leads.runtime.db
    for lead_id, rid, (_, user) in zip(ids, request_ids, USERS * 4, strict=True):
        entries = [
            e for e in (await audit.history(db, LEADS, lead_id, limit=10)).items if e["action"] == "update"
        ]
        assert len(entries) == 2, entries  # its form submit's, then its trial signup's
        mine = [e for e in entries if e["request_id"] == rid]
        assert len(mine) == 1, ("each behaviour's lead update names its own request", entries)
        assert mine[0]["actor"]["username"] == user, "and its own user"

    async def handed() -> bool:  # recorded by the relay as it publishes them
        return await db[HANDOFFS_SENT].count_documents({"key": {"$in": ids}}) == 8

    await eventually(handed, what="each lead handed to sales once")
    assert await db[HANDOFFS_SENT].count_documents({"key": {"$in": ids}}) == 8
    pipeline = outbox_events_pipeline({"event_type": "lead.qualified", "key": {"$in": ids}})
    handoffs = await (await db[OUTBOX].aggregate(pipeline)).to_list()
    assert sorted(h["key"] for h in handoffs) == sorted(ids)


async def test_the_answers_of_behaviours_at_once_are_recorded_together(
    leads: Leads, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each request's answer goes into its key's record after its commit: those that finish
    while one is being written go in ONE ``bulk_write`` (a group's requests finish together),
    not one round trip each; each retry still gets its own first answer."""
    ids = await new_leads(leads, 8)
    sent: list[int] = []
    real = AsyncCollection.bulk_write

    async def spy(self: AsyncCollection[Any], requests: Any, *args: Any, **kw: Any) -> Any:
        if self.name == KEYS:
            sent.append(len(requests))
        return await real(self, requests, *args, **kw)

    monkeypatch.setattr(AsyncCollection, "bulk_write", spy)
    answers, _ = await behave_at_once(leads, ids)
    monkeypatch.undo()
    assert [r.status_code for r in answers] == [201] * 8, [r.text for r in answers]
    assert sum(sent) == 8, sent
    assert len(sent) < 8, f"{sent}: an answer recorded per round trip"
    for lead_id, first, (role, user) in zip(ids, answers, USERS * 4, strict=True):
        url, headers = f"/leads/{lead_id}/behaviours", auth_headers([role], user)
        retry = await leads.client.post(url, json={"behaviour": "trial_signup"}, headers=headers)
        assert (retry.status_code, retry.json()) == (201, first.json())
        assert retry.headers["idempotent-replayed"] == "true"


async def test_a_retry_among_new_behaviours_is_answered_from_its_record(leads: Leads) -> None:
    ids = await new_leads(leads, 4)
    first, _ = await behave_at_once(leads, ids[:1], "page_view")
    assert first[0].status_code == 201, first[0].text
    # The same body to the same lead by the same user: its derived key's retry, sent last with
    # three new ones (the first runs alone; the retry's key is found taken by the group's insert).
    posts = [
        leads.client.post(
            f"/leads/{i}/behaviours",
            json={"behaviour": "page_view"},
            headers=auth_headers(["marketing"], "mia"),
        )
        for i in [*ids[1:], ids[0]]
    ]
    answers = await asyncio.gather(*posts)
    assert [r.status_code for r in answers] == [201] * 4, [r.text for r in answers]
    assert answers[-1].json() == first[0].json()
    assert answers[-1].headers["idempotent-replayed"] == "true"
    assert all("idempotent-replayed" not in r.headers for r in answers[:-1])
    for lead_id in ids:
        items = (
            await leads.client.get(f"/leads/{lead_id}/behaviours", headers=auth_headers(["marketing"], "mia"))
        ).json()["items"]
        assert [i["behaviour"] for i in items].count("page_view") == 1, "each recorded once"


async def test_a_group_naming_a_lead_that_does_not_exist_answers_each_as_alone(leads: Leads) -> None:
    ids = await new_leads(leads, 3)
    answers, _ = await behave_at_once(leads, [ids[1], "no-such-lead", ids[2]], "email_open")
    assert [r.status_code for r in answers] == [201, 404, 201], [r.text for r in answers]


async def test_a_groups_person_keys_are_found_and_marked_shared_before_its_handoffs_are_emitted(
    leads: Leads, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group's handoffs' person keys are found and marked shared beside the leads' write,
    before the handoffs are emitted (crm_platform.uow.MongoUnit.keys_beside): the sealing after
    the emit looks up no key and writes none (a key lookup and a ``shared`` mark were two round
    trips after the emit, between it and the outbox insert: twentieth session, p99leads). Each
    person's key record still goes out once, with its handoff."""
    ids = await new_leads(leads, 8)
    groups = leads.app.state.behaviour_groups.groups
    emitted_at_lookup: list[int] = []
    left_to_write: list[str] = []
    owned_keys, share = shredding._owned_keys, shredding._share

    async def looked_up(db: Any, tx: Any, *args: Any) -> Any:
        emitted_at_lookup.append(len(tx.emitted))
        return await owned_keys(db, tx, *args)

    async def shared(db: Any, tx: Any, owner: str, keys: Any, *, before: int) -> None:
        left_to_write.extend(digest for digest, key in keys if not key.shared and not key.marked)
        await share(db, tx, owner, keys, before=before)

    monkeypatch.setattr(shredding, "_owned_keys", looked_up)
    monkeypatch.setattr(shredding, "_share", shared)
    answers, _ = await behave_at_once(leads, ids)
    monkeypatch.undo()
    assert [r.status_code for r in answers] == [201] * 8, [r.text for r in answers]
    assert all(r.json()["qualified_now"] for r in answers)
    assert leads.app.state.behaviour_groups.groups > groups, "not grouped"
    assert emitted_at_lookup, "no key looked up"
    assert emitted_at_lookup == [0] * len(emitted_at_lookup), "a key looked up after an emit"
    assert left_to_write == [], "a key marked shared after the emit"

    db = leads.runtime.db
    for lead_id in ids:
        stored = await leads.lead(lead_id)
        key = await db[shredding.KEYS].find_one({"email_hash": email_hash(stored["email"])})
        assert key["shared"] is True
        naming = {"$or": [{"key": key["person_id"]}, {"events.key": key["person_id"]}]}
        assert len([r async for r in db[OUTBOX].find(naming)]) == 1, "its key record went out once"
