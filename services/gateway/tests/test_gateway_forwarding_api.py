"""Integration: forwarding to a real upstream over HTTP, role checks, docs proxy, readiness, logs."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

import pytest
from crm_platform.auth import Role
from crm_platform.testing import auth_headers
from gateway.upstream import Upstreams

PASSWORD = "a-good-long-password"


@pytest.fixture
def records() -> Any:
    """Log records of the platform's request line (``crm.http``), with the gateway's filter applied."""
    captured: list[logging.LogRecord] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.append(record)

    handler = Capture(level=logging.INFO)
    logger = logging.getLogger("crm.http")
    logger.addHandler(handler)
    yield captured
    logger.removeHandler(handler)


async def test_forwarding_passes_method_path_query_body_and_headers(
    gateway: Any, helpers: Any, upstream: Any
) -> None:
    async with gateway() as client:
        token = await helpers.login(client)
        r = await client.post(
            "/api/leads/leads/a%20b/c?x=1&y=two%20words&y=3&status=201",
            content=b'{"name": "Ada"}',
            headers={
                **helpers.bearer(token),
                "Content-Type": "application/json",
                "X-Request-Id": "req-123",
                "X-Correlation-Id": "corr-456",
                "Idempotency-Key": "k-1",
            },
        )
        assert r.status_code == 201, r.text
        assert r.headers["content-type"] == "application/json"
        assert r.headers["x-upstream"] == "echo"
        assert r.headers["x-request-id"] == "req-123"
        seen = r.json()
        assert seen["method"] == "POST"
        assert seen["path"] == "/leads/a b/c"
        assert seen["raw_path"] == "/leads/a%20b/c"
        assert seen["query"] == "x=1&y=two%20words&y=3&status=201"
        assert seen["body"] == '{"name": "Ada"}'
        h = seen["headers"]
        assert h["authorization"] == f"Bearer {token}"  # the upstream sees the very same token
        assert h["x-request-id"] == "req-123"
        assert h["x-correlation-id"] == "corr-456"
        assert h["idempotency-key"] == "k-1"
        assert h["content-type"] == "application/json"
        assert h["x-forwarded-proto"] == "http"
        # ... and verified it itself.
        assert seen["principal"]["username"] == "admin"
        assert seen["principal"]["roles"] == ["admin"]
        assert upstream.hits[-1] == seen


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE"])
async def test_every_method_is_forwarded(gateway: Any, method: str) -> None:
    async with gateway() as client:
        r = await client.request(
            method,
            "/api/sales/opportunities/1?status=202",
            headers=auth_headers(["sales_manager"]),
            content=b"payload" if method in ("PUT", "PATCH") else None,
        )
        assert r.status_code == 202
        assert r.json()["method"] == method
        assert r.json()["path"] == "/opportunities/1"


async def test_head_is_forwarded(gateway: Any) -> None:
    async with gateway() as client:
        r = await client.head("/api/sales/inbox", headers=auth_headers(["sales_rep"]))
        assert r.status_code == 200
        assert r.content == b""


async def test_non_json_responses_come_back_unchanged(gateway: Any) -> None:
    async with gateway() as client:
        r = await client.get("/api/analytics/summary?as=csv&status=200", headers=auth_headers(["analyst"]))
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/csv")
        assert r.content == b"id,name\n1,Ada\n"
        err = await client.get("/api/sales/inbox/missing?status=418", headers=auth_headers(["sales_rep"]))
        assert err.status_code == 418
        assert err.json()["path"] == "/inbox/missing"


async def test_request_ids_are_generated_and_forwarded_when_missing(gateway: Any, upstream: Any) -> None:
    async with gateway() as client:
        r = await client.get("/api/sales/inbox", headers=auth_headers(["sales_rep"]))
        rid = r.headers["x-request-id"]
        assert r.json()["headers"]["x-request-id"] == rid
        assert r.json()["headers"]["x-correlation-id"] == rid


async def test_api_routes_need_a_valid_token_before_anything_is_forwarded(
    gateway: Any, upstream: Any
) -> None:
    async with gateway() as client:
        before = len(upstream.hits)
        for headers in ({}, {"Authorization": "Bearer junk"}, {"Authorization": "Basic YWRtaW46eA=="}):
            r = await client.get("/api/leads/leads", headers=headers)
            assert r.status_code == 401, headers
            assert r.json()["error"] == "unauthorized"
        assert (await client.get("/api/nowhere/x")).status_code == 401
        assert len(upstream.hits) == before


async def test_role_table_is_applied_before_forwarding(gateway: Any, upstream: Any) -> None:
    async with gateway() as client:
        before = len(upstream.hits)
        denied: list[tuple[list[str], str, str]] = [
            (["sales_rep"], "PUT", "/api/leads/scoring-rules"),
            (["sales_rep"], "PUT", "/api/leads/Scoring-Rules/"),
            (["sales_rep"], "PUT", "/api/leads//scoring-rules"),
            (["analyst"], "POST", "/api/leads/leads/L-1/behaviours"),
            (["marketing"], "POST", "/api/sales/inbox/L-1/accept"),
            (["analyst"], "PATCH", "/api/sales/opportunities/o-1"),
            (["sales_rep"], "GET", "/api/service-desk/tickets"),
            (["marketing"], "GET", "/api/analytics/summary"),
            (["service_rep"], "GET", "/api/leads/leads"),
            # deny by default: no rule, no entry, whatever the roles
            (["admin"], "GET", "/api/sales/reports"),
            ([str(r) for r in Role], "POST", "/api/leads/exports"),
            (["admin"], "GET", "/api/analytics"),
        ]
        for roles, method, path in denied:
            r = await client.request(method, path, headers=auth_headers(roles))
            assert r.status_code == 403, (roles, method, path, r.text)
            assert r.json()["error"] == "forbidden"
        assert len(upstream.hits) == before
        allowed = [
            (["marketing"], "PUT", "/api/leads/scoring-rules"),
            (["sales_rep"], "POST", "/api/sales/inbox/L-1/reject"),
            (["sales_manager"], "GET", "/api/analytics/summary"),
            (["analyst"], "GET", "/api/leads/leads"),
        ]
        for roles, method, path in allowed:
            r = await client.request(method, path, headers=auth_headers(roles))
            assert r.status_code == 200, (roles, method, path, r.text)
        assert len(upstream.hits) == before + len(allowed)


async def test_role_check_message_names_the_rule_and_roles(gateway: Any) -> None:
    async with gateway() as client:
        r = await client.put("/api/leads/scoring-rules", headers=auth_headers([Role.SALES_REP]))
        message = r.json()["message"]
        assert "/scoring-rules/**" in message
        assert "marketing" in message
        assert "sales_rep" in message


async def test_dot_segments_are_refused(gateway: Any, upstream: Any) -> None:
    async with gateway() as client:
        before = len(upstream.hits)
        r = await client.put("/api/leads/x/%2e%2e/scoring-rules", headers=auth_headers(["sales_rep"]))
        assert r.status_code == 400
        assert len(upstream.hits) == before


async def _raw_status(app: Any, method: str, raw_path: bytes, headers: dict[str, str]) -> int:
    """Send a request line as a raw socket client would (httpx cuts a '#' off as a fragment)."""
    from urllib.parse import unquote

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(raw_path.decode("latin-1")),
        "raw_path": raw_path,
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"test")] + [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("test", 80),
    }
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


@pytest.mark.parametrize(
    "raw",
    [
        b"/api/sales/opportunities#",  # matched as '/opportunities#', sent as '/opportunities'
        b"/api/sales/opportunities%23/x",  # decoded '#' inside a segment is only a character: no rule
        b"/api/leads/scoring-rules#/../x",
        b"/api/sales%2F..%2Fleads/scoring-rules",  # the service spelled with an encoded slash
    ],
)
async def test_unusual_spellings_never_reach_an_upstream(gateway: Any, upstream: Any, raw: bytes) -> None:
    async with gateway() as client:
        app = client._transport.app
        before = len(upstream.hits)
        status = await _raw_status(app, "POST", raw, auth_headers(["analyst"]))
        assert status in (400, 403, 404), status
        assert len(upstream.hits) == before


async def test_unknown_service_is_404(gateway: Any) -> None:
    async with gateway() as client:
        r = await client.get("/api/billing/invoices", headers=auth_headers(["admin"]))
        assert r.status_code == 404
        assert "billing" in r.json()["message"]
        assert (await client.get("/api/billing", headers=auth_headers(["admin"]))).status_code == 404


async def test_the_upstream_pool_opens_at_most_its_configured_connections(upstream: Any) -> None:
    """CRM_UPSTREAM_MAX_CONNECTIONS bounds the pool (it reached only the client, not the
    transport the gateway makes, which allowed httpx's default of 100): 12 clients at once,
    three connections."""
    up = Upstreams({"leads": upstream.url}, max_connections=3)
    tag = uuid.uuid4().hex[:8]
    headers = auth_headers(["marketing"])

    async def one(i: int) -> None:
        forwarded = await up.forward(
            "leads",
            method="GET",
            raw_path=f"/pool-{tag}/{i}",
            query=b"",
            headers=headers,
            body=b"",
            client_host="127.0.0.1",
            scheme="http",
            host="gateway",
        )
        assert forwarded.status_code == 200
        await forwarded.aclose()

    try:
        await asyncio.gather(*(one(i) for i in range(12)))
    finally:
        await up.aclose()
    mine = [hit for hit in upstream.hits if hit["path"].startswith(f"/pool-{tag}/")]
    assert len(mine) == 12
    assert len({hit["client_port"] for hit in mine}) <= 3


async def test_upstream_down_is_503(gateway: Any) -> None:
    async with gateway() as client:
        r = await client.get("/api/service-desk/tickets", headers=auth_headers(["service_rep"]))
        assert r.status_code == 503
        body = r.json()
        assert body["error"] == "upstream_unavailable"
        assert body["service"] == "service-desk"
        assert body["request_id"] == r.headers["x-request-id"]


async def test_upstream_timeout_is_504(gateway: Any) -> None:
    async with gateway(CRM_UPSTREAM_TIMEOUT_SECONDS=0.3) as client:
        r = await client.get("/api/sales/inbox/slow", headers=auth_headers(["sales_rep"]))
        assert r.status_code == 504
        assert r.json()["error"] == "upstream_timeout"
        assert r.json()["service"] == "sales"


async def test_forwarded_request_logs_one_line_with_upstream_fields(gateway: Any, records: Any) -> None:
    async with gateway() as client:
        records.clear()
        r = await client.get("/api/leads/leads?status=200", headers=auth_headers(["analyst"]))
        assert r.status_code == 200
        lines = [rec for rec in records if rec.getMessage().startswith("GET /api/leads/leads")]
        assert len(lines) == 1
        line = lines[0]
        assert line.status == 200
        assert line.upstream == "leads"
        assert line.upstream_path == "/leads"
        assert line.upstream_status == 200
        assert line.upstream_ms > 0
        assert line.duration_ms >= line.upstream_ms
        records.clear()
        await client.get("/api/service-desk/tickets", headers=auth_headers(["service_rep"]))
        (down,) = [rec for rec in records if rec.getMessage().startswith("GET /api/service-desk")]
        assert down.status == 503
        assert down.upstream == "service-desk"
        assert down.upstream_error == "ConnectError"


async def test_deactivated_users_tokens_stop_working_at_the_gateway(gateway: Any, helpers: Any) -> None:
    async with gateway() as client:
        admin = await helpers.login(client)
        user = await helpers.create_user(client, admin, "ana", ["analyst"])
        token = await helpers.login(client, "ana", PASSWORD)
        assert (await client.get("/api/analytics/summary", headers=helpers.bearer(token))).status_code == 200
        await client.patch(f"/users/{user['id']}", headers=helpers.bearer(admin), json={"active": False})
        r = await client.get("/api/analytics/summary", headers=helpers.bearer(token))
        assert r.status_code == 401
        assert "deactivated" in r.json()["message"]


async def test_docs_index_links_every_service(gateway: Any) -> None:
    async with gateway() as client:
        r = await client.get("/docs")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/html")
        for name in ("gateway", "leads", "sales", "service-desk", "analytics"):
            assert f'href="/docs/{name}"' in r.text


async def test_service_docs_page_points_at_the_proxied_openapi(gateway: Any) -> None:
    async with gateway() as client:
        r = await client.get("/docs/leads")
        assert r.status_code == 200
        assert "swagger-ui" in r.text
        assert "'/api/leads/openapi.json'" in r.text or '"/api/leads/openapi.json"' in r.text
        own = await client.get("/docs/gateway")
        assert "/openapi.json" in own.text
        assert (await client.get("/docs/billing")).status_code == 404


async def test_docs_pages_load_swagger_assets_from_the_gateway_not_a_cdn(gateway: Any) -> None:
    async with gateway() as client:
        page = (await client.get("/docs/leads")).text
        assert "cdn." not in page
        for asset in ("/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css"):
            assert asset in page
            r = await client.get(asset)
            assert r.status_code == 200, asset
            assert len(r.content) > 10_000


async def test_openapi_is_fetched_without_a_token_and_servers_rewritten(gateway: Any, upstream: Any) -> None:
    async with gateway() as client:
        r = await client.get("/api/sales/openapi.json")
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["info"]["title"] == "Echo department"
        assert doc["servers"] == [{"url": "/api/sales", "description": "sales through the gateway"}]
        assert "/inbox/slow" in doc["paths"]
        assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
        down = await client.get("/api/service-desk/openapi.json")
        assert down.status_code == 503
        assert down.json()["service"] == "service-desk"
        assert (await client.get("/api/billing/openapi.json")).status_code == 404


async def test_gateway_openapi_documents_auth_and_users(gateway: Any) -> None:
    async with gateway() as client:
        doc = (await client.get("/openapi.json")).json()
        assert {"/auth/login", "/auth/me", "/users", "/users/{user_id}"} <= set(doc["paths"])
        assert "/api/{service}/{path}" in doc["paths"]
        assert "429" in doc["paths"]["/auth/login"]["post"]["responses"]
        assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
        login_schema = json.dumps(doc["components"]["schemas"]["LoginRequest"])
        assert '"format": "password"' in login_schema


async def test_readiness_checks_mongo_and_reports_upstreams(gateway: Any) -> None:
    async with gateway() as client:
        r = await client.get("/readyz")
        assert r.status_code == 200
        body = r.json()
        assert body["status"] == "ready"
        assert body["checks"] == {"mongodb": "ok"}
        assert body["upstreams"]["leads"] == "ok"
        assert body["upstreams"]["sales"] == "ok"
        assert body["upstreams"]["service-desk"].startswith("unreachable")
        assert (await client.get("/healthz")).json() == {"status": "ok", "service": "gateway"}
