"""Safe retries: a retried POST returns the first answer and has no second effect.

Before: a behaviour retried without ``external_id`` (e.g. after a client timeout)
was counted twice, and no POST accepted an ``Idempotency-Key``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from crm_platform.testing import auth_headers

MARKETING = auth_headers(["marketing"], "mia")
OTHER_MARKETER = auth_headers(["marketing"], "max")


def _capture_body(email: str) -> dict[str, Any]:
    return {
        "name": "Grace Hopper",
        "email": email,
        "source_channel": "webinar",
        "consent": {"marketing_email": True},
    }


async def test_a_retried_capture_returns_the_first_answer(leads: Any) -> None:
    key = uuid.uuid4().hex
    body = _capture_body(leads.unique_email("grace"))
    headers = {**MARKETING, "Idempotency-Key": key}
    first = await leads.client.post("/leads", json=body, headers=headers)
    assert first.status_code == 201, first.text
    again = await leads.client.post("/leads", json=body, headers=headers)
    assert again.status_code == 201  # the first answer, not the "merged" 200 of a second capture
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    lead = await leads.lead(first.json()["lead"]["id"])
    assert lead["touch_count"] == 1  # no second effect


async def test_the_same_key_for_a_different_request_is_refused(leads: Any) -> None:
    headers = {**MARKETING, "Idempotency-Key": uuid.uuid4().hex}
    first = await leads.client.post("/leads", json=_capture_body(leads.unique_email("a")), headers=headers)
    assert first.status_code == 201, first.text
    other = await leads.client.post("/leads", json=_capture_body(leads.unique_email("b")), headers=headers)
    assert other.status_code == 422
    assert other.json()["error"] == "idempotency_key_reused"


async def test_keys_belong_to_their_principal(leads: Any) -> None:
    key = uuid.uuid4().hex
    body = _capture_body(leads.unique_email("c"))
    first = await leads.client.post("/leads", json=body, headers={**MARKETING, "Idempotency-Key": key})
    assert first.status_code == 201
    # Another user with the same key runs their own request (here: a merge into the same lead).
    theirs = await leads.client.post("/leads", json=body, headers={**OTHER_MARKETER, "Idempotency-Key": key})
    assert theirs.status_code == 200, theirs.text
    assert theirs.json()["merged"] is True
    assert "idempotent-replayed" not in theirs.headers


async def test_a_request_that_failed_validation_leaves_no_key_behind(leads: Any) -> None:
    headers = {**MARKETING, "Idempotency-Key": uuid.uuid4().hex}
    bad = await leads.client.post("/leads", json={"name": "x"}, headers=headers)
    assert bad.status_code == 422
    good = await leads.client.post("/leads", json=_capture_body(leads.unique_email("d")), headers=headers)
    assert good.status_code == 201, good.text


async def test_a_malformed_key_is_a_422(leads: Any) -> None:
    r = await leads.client.post(
        "/leads", json=_capture_body(leads.unique_email("e")), headers={**MARKETING, "Idempotency-Key": "a b"}
    )
    assert r.status_code == 422


async def test_a_behaviour_retried_without_external_id_is_counted_once(leads: Any) -> None:
    lead = (await leads.capture())["lead"]
    url = f"/leads/{lead['id']}/behaviours"
    first = await leads.client.post(url, json={"behaviour": "form_submit"}, headers=MARKETING)
    assert first.status_code == 201, first.text
    retry = await leads.client.post(url, json={"behaviour": "form_submit"}, headers=MARKETING)
    assert retry.status_code == 201
    assert retry.json() == first.json()
    assert retry.headers["idempotent-replayed"] == "true"
    assert (await leads.lead(lead["id"]))["score"] == first.json()["lead"]["score"] == 20
    items = (await leads.client.get(url, headers=MARKETING)).json()["items"]
    assert len(items) == 1


async def test_distinct_occurrences_still_count(leads: Any) -> None:
    lead = (await leads.capture())["lead"]
    url = f"/leads/{lead['id']}/behaviours"
    for at in ("2026-01-05T10:00:00Z", "2026-01-05T10:05:00Z"):
        r = await leads.client.post(
            url, json={"behaviour": "page_view", "occurred_at": at}, headers=MARKETING
        )
        assert r.status_code == 201, r.text
    for key in ("k1", "k2"):
        r = await leads.client.post(
            url,
            json={"behaviour": "page_view"},
            headers={**MARKETING, "Idempotency-Key": f"{lead['id']}-{key}"},
        )
        assert r.status_code == 201, r.text
    items = (await leads.client.get(url, headers=MARKETING)).json()["items"]
    assert len(items) == 4


async def test_the_key_is_stored_with_an_expiry(leads: Any) -> None:
    db = leads.runtime.store.db
    indexes = await db["idempotency_keys"].index_information()
    assert any(ix.get("expireAfterSeconds") == 0 for ix in indexes.values())
    doc = await db["idempotency_keys"].find_one({})
    assert doc is not None
    assert doc["expires_at"] > doc["created_at"]


async def _key_operations(leads: Any, url: str, body: dict[str, Any], headers: dict[str, str]) -> list[str]:
    """POST ``body`` to ``url``; every operation on the keys' collection it sent, in order (the
    profiler's view: reads outside the transaction and writes in it alike)."""
    db = leads.runtime.store.db
    await db["system.profile"].drop()
    await db.command({"profile": 2})
    try:
        r = await leads.client.post(url, json=body, headers=headers)
    finally:
        await db.command({"profile": 0})
    assert r.status_code == 201, r.text
    on_keys = db["system.profile"].find({"ns": f"{db.name}.idempotency_keys"}).sort("ts", 1)
    ops = [op["op"] async for op in on_keys]
    await db["system.profile"].drop()
    return ops


async def test_a_behaviours_key_is_not_read_before_its_transaction(leads: Any) -> None:
    """A behaviour's key (the derived one, or the client's) is claimed by its insert in the
    request's transaction and answered once in the record after it: no read of the key before
    the request runs (a round trip of the 11 a single qualifying request made; fourteenth
    session, latency). Other routes still read their key first."""
    lead = (await leads.capture())["lead"]["id"]
    url = f"/leads/{lead}/behaviours"
    assert await _key_operations(leads, url, {"behaviour": "page_view"}, MARKETING) == ["insert", "update"]
    keyed = {**MARKETING, "Idempotency-Key": uuid.uuid4().hex}
    assert await _key_operations(leads, url, {"behaviour": "email_open"}, keyed) == ["insert", "update"]
    capture = {**MARKETING, "Idempotency-Key": uuid.uuid4().hex}
    body = _capture_body(leads.unique_email("ada"))
    assert await _key_operations(leads, "/leads", body, capture) == ["query", "insert", "update"]


async def test_a_behaviour_keyed_on_insert_answers_a_reused_key_and_a_lost_answer_from_the_record(
    leads: Any,
) -> None:
    """Found taken by its insert, the key is answered as a read of it first would have: the
    first answer replayed, another body 422, an answer never recorded 409; nothing recorded
    twice (the aborted transaction kept nothing)."""
    lead = (await leads.capture())["lead"]["id"]
    url = f"/leads/{lead}/behaviours"
    headers = {**MARKETING, "Idempotency-Key": uuid.uuid4().hex}
    first = await leads.client.post(url, json={"behaviour": "form_submit"}, headers=headers)
    assert first.status_code == 201, first.text
    again = await leads.client.post(url, json={"behaviour": "form_submit"}, headers=headers)
    assert (again.status_code, again.json()) == (201, first.json())
    assert again.headers["idempotent-replayed"] == "true"
    other = await leads.client.post(url, json={"behaviour": "page_view"}, headers=headers)
    assert (other.status_code, other.json()["error"]) == (422, "idempotency_key_reused")
    db = leads.runtime.store.db
    lost = {**MARKETING, "Idempotency-Key": uuid.uuid4().hex}
    r = await leads.client.post(url, json={"behaviour": "email_open"}, headers=lost)
    assert r.status_code == 201, r.text
    recorded = {"path": url, "response.status": 201}
    await db["idempotency_keys"].update_many(recorded, {"$set": {"response": None}})
    answer = await leads.client.post(url, json={"behaviour": "email_open"}, headers=lost)
    assert (answer.status_code, answer.json()["error"]) == (409, "idempotency_answer_lost")
    items = (await leads.client.get(url, headers=MARKETING)).json()["items"]
    assert sorted(i["behaviour"] for i in items) == ["email_open", "form_submit"]


async def test_an_expired_key_found_taken_by_its_insert_runs_the_request_again(leads: Any) -> None:
    """A record past its expiry that the TTL monitor has not removed yet is no answer: the
    request runs (once) as a new one."""
    lead = (await leads.capture())["lead"]["id"]
    url = f"/leads/{lead}/behaviours"
    headers = {**MARKETING, "Idempotency-Key": uuid.uuid4().hex}
    assert (await leads.client.post(url, json={"behaviour": "page_view"}, headers=headers)).status_code == 201
    db = leads.runtime.store.db
    past = datetime.now(UTC) - timedelta(minutes=1)
    await db["idempotency_keys"].update_many({"path": url}, {"$set": {"expires_at": past}})
    again = await leads.client.post(url, json={"behaviour": "page_view"}, headers=headers)
    assert again.status_code == 201, again.text
    assert "idempotent-replayed" not in again.headers
    items = (await leads.client.get(url, headers=MARKETING)).json()["items"]
    assert len(items) == 2
