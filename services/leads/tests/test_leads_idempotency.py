"""Safe retries: a retried POST returns the first answer and has no second effect.

Before: a behaviour retried without ``external_id`` (e.g. after a client timeout)
was counted twice, and no POST accepted an ``Idempotency-Key``.
"""

from __future__ import annotations

import uuid
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
