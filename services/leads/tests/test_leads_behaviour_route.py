"""``POST /leads/{id}/behaviours`` through BehaviourRoute (leads.api.capture_route): a single
behaviour that passes every check is answered without FastAPI's dependency solving, with the
answer FastAPI gives (201, 200 for a known ``external_id``, the handoff as before); anything else
(401, 403, 404, 422, a body FastAPI reads differently) is FastAPI's own answer."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from crm_platform.mongo import HANDOFFS_SENT
from crm_platform.testing import auth_headers, eventually, json_shape

MARKETING = auth_headers(["marketing"], "mia")


def _keyed() -> dict[str, str]:
    return {**MARKETING, "Idempotency-Key": uuid.uuid4().hex}


async def test_a_qualifying_behaviour_skips_dependency_solving(leads: Any, solved: list[int]) -> None:
    lead_id = (await leads.capture())["lead"]["id"]
    await leads.behave(lead_id, "form_submit")
    solved.clear()
    body = {"behaviour": "trial_signup", "external_id": f"ext-{uuid.uuid4().hex[:8]}"}
    first = await leads.client.post(f"/leads/{lead_id}/behaviours", json=body, headers=_keyed())
    again = await leads.client.post(f"/leads/{lead_id}/behaviours", json=body, headers=_keyed())
    assert (first.status_code, again.status_code) == (201, 200), (first.text, again.text)
    assert solved == []
    assert first.json()["qualified_now"] is True
    assert first.json()["lead"]["id"] == lead_id
    assert again.json()["duplicate"] is True
    assert first.headers["content-type"] == "application/json"
    assert int(first.headers["content-length"]) == len(first.content)
    sent = leads.runtime.db[HANDOFFS_SENT]  # recorded by the relay as it publishes the handoff
    await eventually(lambda: sent.find_one({"key": lead_id}), what="the handoff's record")
    assert await sent.count_documents({"key": lead_id}) == 1
    mine = await leads.lead(lead_id)
    assert mine["status"] == "qualified", mine


async def test_the_answer_is_the_one_fastapi_gives(leads: Any, solved: list[int]) -> None:
    """The same behaviour answered by the lean handler and by FastAPI's (a ``+json`` content
    type, which only FastAPI reads): the same status, headers and fields."""
    ids = [(await leads.capture())["lead"]["id"] for _ in range(2)]
    solved.clear()
    lean = await leads.client.post(
        f"/leads/{ids[0]}/behaviours", json={"behaviour": "page_view"}, headers=_keyed()
    )
    assert solved == []
    headers = {**_keyed(), "content-type": "application/vnd.crm+json"}
    full = await leads.client.post(
        f"/leads/{ids[1]}/behaviours", content=b'{"behaviour": "page_view"}', headers=headers
    )
    assert solved == [1]
    assert (lean.status_code, full.status_code) == (201, 201), full.text
    assert json_shape(lean.json()) == json_shape(full.json())
    assert sorted(k for k in lean.headers if k != "date") == sorted(k for k in full.headers if k != "date")


@pytest.mark.parametrize(
    ("headers", "content", "lead", "status"),
    [
        ({}, None, "", 401),
        (auth_headers(["sales_rep"], "sid"), None, "", 403),
        (auth_headers(["analyst"], "ann"), None, "", 403),
        (MARKETING, b'{"behaviour": "nonsense"}', "", 422),  # not a behaviour
        (MARKETING, b"{}", "", 422),  # field missing
        ({**MARKETING, "content-type": "text/plain"}, None, "", 422),  # not read as JSON
        (MARKETING, None, "x" * 101, 422),  # the lead id's path field refuses it
    ],
)
async def test_refused_behaviours_are_fastapis_answers(
    leads: Any, solved: list[int], headers: dict[str, str], content: bytes | None, lead: str, status: int
) -> None:
    lead_id = lead or (await leads.capture())["lead"]["id"]
    solved.clear()
    sent = {"content-type": "application/json", "Idempotency-Key": uuid.uuid4().hex, **headers}
    r = await leads.client.post(
        f"/leads/{lead_id}/behaviours", content=content or b'{"behaviour": "page_view"}', headers=sent
    )
    assert r.status_code == status, r.text
    assert solved == [1]  # FastAPI's handler answered
    assert r.json()["error"] in ("unauthorized", "forbidden", "validation_error")
    assert r.json()["request_id"] == r.headers["x-request-id"]


async def test_a_missing_lead_is_the_404_it_was(leads: Any, solved: list[int]) -> None:
    r = await leads.client.post(
        f"/leads/no-such-{uuid.uuid4().hex[:8]}/behaviours", json={"behaviour": "page_view"}, headers=_keyed()
    )
    assert r.status_code == 404, r.text
    assert solved == []
    assert r.json()["error"] == "not_found"
