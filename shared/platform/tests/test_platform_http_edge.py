"""The HTTP edge every service shares (crm_platform.app / edge / openapi / docs), no I/O.

Each test pins one defect an outside client could trigger: a 500 naming no
request id, bodies of any size read before auth, database outages answered 500,
enum reprs in messages, undocumented error statuses, and a blank /docs offline.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from crm_platform.app import create_app
from crm_platform.auth import Role, require_roles
from crm_platform.settings import ServiceSettings
from crm_platform.testing import auth_headers
from fastapi import APIRouter, FastAPI
from pydantic import BaseModel
from pymongo.errors import AutoReconnect, ExecutionTimeout, OperationFailure, ServerSelectionTimeoutError

LIMIT = 4096


class Note(BaseModel):
    text: str


router = APIRouter()


@router.post("/notes", status_code=201)
async def create_note(note: Note) -> Note:
    return note


@router.get("/boom")
async def boom() -> None:
    raise RuntimeError("a bug")


@router.get("/db/{kind}")
async def db_error(kind: str) -> None:
    errors: dict[str, Exception] = {
        "selection": ServerSelectionTimeoutError("no servers"),
        "reconnect": AutoReconnect("connection reset"),
        "deadline": ExecutionTimeout("operation exceeded time limit", 50),
        "bug": OperationFailure("bad query", 2),
    }
    raise errors[kind]


@router.get("/admins-only", dependencies=[require_roles(Role.ADMIN, Role.SALES_MANAGER)])
async def admins_only() -> dict[str, str]:
    return {"ok": "yes"}


def _app() -> FastAPI:
    settings = ServiceSettings.model_validate(
        {
            "CRM_SERVICE_NAME": "edge-test",
            "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
            "MONGODB_URI": "mongodb://127.0.0.1:1",
            "CRM_MAX_REQUEST_BYTES": LIMIT,
            "CRM_RETRY_AFTER_SECONDS": 7,
        }
    )
    return create_app(settings=settings, title="edge test", runtime=None, protected=[router])


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


AUTH = auth_headers(["marketing"])


async def test_an_unhandled_error_answers_500_naming_the_request_id(client: httpx.AsyncClient) -> None:
    r = await client.get("/boom", headers={**AUTH, "X-Request-ID": "req-42"})
    assert r.status_code == 500
    assert r.json()["error"] == "internal_error"
    assert r.json()["request_id"] == "req-42"
    assert r.headers["x-request-id"] == "req-42"

    generated = await client.get("/boom", headers=AUTH)
    assert generated.json()["request_id"]
    assert generated.json()["request_id"] == generated.headers["x-request-id"]


async def test_a_body_declared_above_the_limit_is_refused_unread(client: httpx.AsyncClient) -> None:
    # No token either: the size check comes first, and the body is never parsed.
    r = await client.post("/notes", content=b"x" * (LIMIT + 1), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["error"] == "payload_too_large"
    assert r.json()["request_id"] == r.headers["x-request-id"]


async def test_a_streamed_body_is_cut_off_at_the_limit(client: httpx.AsyncClient) -> None:
    chunks_sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal chunks_sent
        yield b'{"text": "'
        for _ in range(100):  # 100 KB, no Content-Length: chunked
            chunks_sent += 1
            yield b"y" * 1024
        yield b'"}'

    r = await client.post("/notes", content=chunks(), headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["error"] == "payload_too_large"
    assert chunks_sent < 100


async def test_a_body_within_the_limit_is_served(client: httpx.AsyncClient) -> None:
    r = await client.post("/notes", json={"text": "y" * (LIMIT // 2)}, headers=AUTH)
    assert r.status_code == 201


async def test_an_invalid_content_length_is_a_400(client: httpx.AsyncClient) -> None:
    r = await client.post("/notes", content=b"{}", headers={**AUTH, "content-length": "abc"})
    assert r.status_code == 400


@pytest.mark.parametrize("kind", ["selection", "reconnect", "deadline"])
async def test_a_database_outage_is_a_503_with_retry_after(client: httpx.AsyncClient, kind: str) -> None:
    r = await client.get(f"/db/{kind}", headers=AUTH)
    assert r.status_code == 503
    assert r.headers["retry-after"] == "7"
    assert r.json()["error"] == "database_unavailable"
    assert r.json()["request_id"] == r.headers["x-request-id"]


async def test_other_database_errors_stay_500(client: httpx.AsyncClient) -> None:
    r = await client.get("/db/bug", headers=AUTH)
    assert r.status_code == 500
    assert r.json()["request_id"]


async def test_role_errors_name_role_values_not_python_reprs(client: httpx.AsyncClient) -> None:
    r = await client.get("/admins-only", headers=AUTH)
    assert r.status_code == 403
    message = r.json()["message"]
    assert "<Role." not in message
    assert "'admin'" in message
    assert "'sales_manager'" in message


def _responses(doc: dict[str, Any], method: str, path: str) -> set[str]:
    return set(doc["paths"][path][method]["responses"])


async def test_openapi_documents_the_error_statuses_routes_return(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    assert {"201", "401", "403", "409", "413", "422", "503"} <= _responses(doc, "post", "/notes")
    assert {"401", "403", "404", "422", "503"} <= _responses(doc, "get", "/db/{kind}")
    assert "413" not in _responses(doc, "get", "/boom")
    unavailable = doc["paths"]["/notes"]["post"]["responses"]["503"]
    assert "Retry-After" in unavailable["headers"]
    assert unavailable["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")


async def test_docs_page_and_its_assets_are_served_locally(client: httpx.AsyncClient) -> None:
    page = await client.get("/docs")
    assert page.status_code == 200
    assert "cdn" not in page.text.lower()
    assert "/docs/assets/swagger-ui-bundle.js" in page.text
    js = await client.get("/docs/assets/swagger-ui-bundle.js")
    assert js.status_code == 200
    assert len(js.content) > 100_000
    css = await client.get("/docs/assets/swagger-ui.css")
    assert css.status_code == 200


class _NotReady:
    """A runtime stand-in whose database check fails (create_app only calls check_ready here)."""

    async def check_ready(self) -> dict[str, str]:
        return {"mongodb": "unreachable: ServerSelectionTimeoutError"}


async def test_a_readiness_report_adds_fields_without_deciding_readiness() -> None:
    async def report() -> dict[str, Any]:
        return {"upstreams": {"sales": "ok"}}

    public = APIRouter()

    @public.get("/docs")
    async def own_docs() -> dict[str, str]:
        return {"docs": "the service's own"}

    app = _app_with(readiness_report=report, docs_page=False, runtime=_NotReady(), public=[public])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
        r = await c.get("/readyz")
        assert r.status_code == 503, "the runtime's check decides, not the report"
        assert r.json()["upstreams"] == {"sales": "ok"}
        assert r.json()["checks"] == {"mongodb": "unreachable: ServerSelectionTimeoutError"}
        assert (await c.get("/docs")).json() == {"docs": "the service's own"}, "no platform page to shadow it"
        assert (await c.get("/docs/assets/swagger-ui.css")).status_code == 200


def _app_with(**options: Any) -> FastAPI:
    app = _app()
    settings = app.state.settings
    return create_app(settings=settings, title="edge test", **options)


# -- the edge's per-request bookkeeping (docs/performance.md, "Twenty-seventh session, capture") --


def _count(name: str, labels: dict[str, str]) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_each_request_is_counted_under_its_labels_which_are_looked_up_once(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crm_platform import metrics

    lookups: list[tuple[str, ...]] = []
    labels = metrics.HTTP_REQUESTS.labels

    def counted(*values: str) -> Any:
        lookups.append(values)
        return labels(*values)

    monkeypatch.setattr(metrics.HTTP_REQUESTS, "labels", counted)
    created = {"service": "edge-test", "method": "POST", "route": "/notes", "status": "201"}
    refused = {**created, "status": "422"}
    before = _count("crm_http_requests_total", created), _count("crm_http_requests_total", refused)
    timed = {"service": "edge-test", "method": "POST", "route": "/notes"}
    observed = _count("crm_http_request_seconds_count", timed)
    for _ in range(3):
        assert (await client.post("/notes", json={"text": "a"}, headers=AUTH)).status_code == 201
    assert (await client.post("/notes", json={}, headers=AUTH)).status_code == 422
    assert _count("crm_http_requests_total", created) == before[0] + 3
    assert _count("crm_http_requests_total", refused) == before[1] + 1
    assert _count("crm_http_request_seconds_count", timed) == observed + 4
    assert lookups == [("edge-test", "POST", "/notes", "201"), ("edge-test", "POST", "/notes", "422")]


def test_the_log_line_is_the_json_it_was_with_its_time_to_the_millisecond() -> None:
    import json
    import logging
    from datetime import UTC, datetime

    from crm_platform.logging import JsonFormatter

    formatter = JsonFormatter("edge-test")
    # Each whole second's text is made once: the same second again, the next, a carry of the
    # rounded microseconds into the next second, an earlier second after a later one.
    moments = [1765152000.0004, 1765152000.9994, 1765152000.9999996, 1765152001.5, 1765151999.25, 0.0]
    for created in moments:
        record = logging.LogRecord("crm.http", logging.INFO, __file__, 1, "%s -> %d", ("POST /x", 201), None)
        record.created = created
        upstream = object()  # not JSON: written as its str(), as before
        record.__dict__.update(duration_ms=1.25, upstream=upstream)
        line = json.loads(formatter.format(record))
        assert line["ts"] == datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
        assert line["msg"] == "POST /x -> 201"
        assert line["duration_ms"] == 1.25
        assert line["upstream"] == str(upstream)
        assert list(line)[:5] == ["ts", "level", "service", "logger", "msg"]


def test_framework_telemetry_is_off_and_records_skip_thread_and_process_names() -> None:
    import logging

    app = _app()
    # crm_platform.tracing traces every request; FastAPI's own would repeat it (and asked the
    # global OpenTelemetry providers on every request whether it had anything to do).
    assert not any(app._telemetry.get(signal) for signal in ("tracing", "metrics", "logs"))
    record = logging.getLogger("crm.http").makeRecord("crm.http", logging.INFO, "f", 1, "m", (), None)
    assert record.threadName is None  # never written to the line
    assert record.processName is None


async def test_a_request_without_an_id_gets_a_new_version_4_uuid(client: httpx.AsyncClient) -> None:
    import uuid

    ids = {
        (await client.post("/notes", json={"text": "a"}, headers=AUTH)).headers["x-request-id"]
        for _ in range(50)
    }
    assert len(ids) == 50
    for rid in ids:
        parsed = uuid.UUID(rid)
        assert parsed.hex == rid  # uuid.uuid4().hex's form: 32 lower-case hex digits
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
