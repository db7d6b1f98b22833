"""``POST /leads`` through CaptureRoute (leads.api.capture_route): a capture that passes every
check is answered without FastAPI's dependency solving, with the answer FastAPI gives; anything
else (401, 403, 422, a body FastAPI reads differently) is FastAPI's own answer."""

from __future__ import annotations

from typing import Any

import pytest
from crm_platform.testing import auth_headers, json_shape

MARKETING = auth_headers(["marketing"], "mia")


def _body(leads: Any, **change: Any) -> dict[str, Any]:
    body = {
        "name": "Ada Lovelace",
        "email": leads.unique_email("route"),
        "company": "Engines",
        "source_channel": "webinar",
        "consent": {"marketing_email": True},
    }
    return {**body, **change}


async def test_a_valid_capture_skips_dependency_solving(leads: Any, solved: list[int]) -> None:
    body = _body(leads)
    first = await leads.client.post("/leads", json=body, headers=MARKETING)
    again = await leads.client.post("/leads", json={**body, "company": "Analytical"}, headers=MARKETING)
    assert (first.status_code, again.status_code) == (201, 200), (first.text, again.text)
    assert solved == []
    assert first.json()["merged"] is False
    assert again.json()["merged"] is True
    assert again.json()["lead"]["id"] == first.json()["lead"]["id"]
    assert first.headers["content-type"] == "application/json"
    assert int(first.headers["content-length"]) == len(first.content)


async def test_the_answer_is_the_one_fastapi_gives(leads: Any, solved: list[int]) -> None:
    """The same capture answered by FastAPI's handler (a ``+json`` content type, which only
    FastAPI reads) and by the lean one: the same status, headers and fields."""
    lean = await leads.client.post("/leads", json=_body(leads), headers=MARKETING)
    assert solved == []
    body = _body(leads)
    raw = leads.client.build_request("POST", "/leads", json=body).content
    headers = {**MARKETING, "content-type": "application/vnd.crm+json"}
    full = await leads.client.post("/leads", content=raw, headers=headers)
    assert solved == [1]
    assert (lean.status_code, full.status_code) == (201, 201), full.text
    assert json_shape(lean.json()) == json_shape(full.json())
    assert sorted(k for k in lean.headers if k not in ("date",)) == sorted(
        k for k in full.headers if k not in ("date",)
    )


@pytest.mark.parametrize(
    ("headers", "content", "status"),
    [
        ({}, None, 401),
        (auth_headers(["sales_rep"], "sid"), None, 403),
        (auth_headers(["analyst"], "ann"), None, 403),
        (MARKETING, b'{"name": "Ada"', 422),  # not JSON
        (MARKETING, b'{"name": "Ada"}', 422),  # fields missing
        ({**MARKETING, "content-type": "text/plain"}, None, 422),  # not read as JSON
    ],
)
async def test_refused_captures_are_fastapis_answers(
    leads: Any, solved: list[int], headers: dict[str, str], content: bytes | None, status: int
) -> None:
    raw = (
        content
        if content is not None
        else leads.client.build_request("POST", "/leads", json=_body(leads)).content
    )
    sent = {"content-type": "application/json", **headers}
    r = await leads.client.post("/leads", content=raw, headers=sent)
    assert r.status_code == status, r.text
    if content == b'{"name": "Ada"':  # FastAPI's handler refuses it before solving anything
        assert r.json()["fields"][0]["type"] == "json_invalid", r.json()
    else:
        assert solved == [1]  # FastAPI's handler answered
    assert r.json()["error"] in ("unauthorized", "forbidden", "validation_error")
    assert r.json()["request_id"] == r.headers["x-request-id"]


async def test_a_chunked_body_past_the_limit_is_a_413(leads: Any) -> None:
    """Read by the lean path (the checks passed): the edge's 413, as FastAPI's handler gave it."""
    limit = leads.settings.max_request_bytes
    first = leads.client.build_request("POST", "/leads", json=_body(leads)).content[:-1]

    async def chunks() -> Any:  # no Content-Length: only counting while reading can refuse it
        yield first + b', "name2": "'
        for _ in range(limit // 4096 + 2):
            yield b"x" * 4096
        yield b'"}'

    headers = {**MARKETING, "content-type": "application/json"}
    r = await leads.client.post("/leads", content=chunks(), headers=headers)
    assert r.status_code == 413, r.text
    assert r.json()["error"] == "payload_too_large"
