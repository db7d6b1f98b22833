"""Shared fixtures: a real upstream over HTTP (uvicorn) and a gateway wired to it."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import uvicorn
from crm_platform.app import create_app
from crm_platform.auth import CurrentUser
from crm_platform.settings import ServiceSettings
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from gateway.main import create_app as create_gateway
from gateway.settings import GatewaySettings

pytest_plugins = ["crm_platform.testing"]


ADMIN_PASSWORD = "admin-dev-password"


@dataclass
class Upstream:
    url: str
    hits: list[dict[str, Any]] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _upstream_app(hits: list[dict[str, Any]]) -> Any:
    """A department-like service built with the platform: it verifies the token itself."""
    settings = ServiceSettings.model_validate(
        {
            "CRM_SERVICE_NAME": "echo",
            "CRM_ENV": "test",
            "KAFKA_BOOTSTRAP_SERVERS": "unused",
            "MONGODB_URI": "mongodb://unused",
        }
    )
    router = APIRouter()

    @router.get("/inbox/slow")
    async def slow() -> dict[str, str]:
        await asyncio.sleep(3)
        return {"status": "late"}

    @router.api_route(
        "/{rest:path}", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False
    )
    async def echo(rest: str, request: Request, principal: CurrentUser) -> Response:
        body = await request.body()
        seen = {
            "method": request.method,
            "path": request.url.path,
            "raw_path": request.scope.get("raw_path", b"").decode("latin-1"),
            "query": request.url.query,
            "body": body.decode("utf-8", "replace"),
            "headers": {k: v for k, v in request.headers.items()},
            "client_port": request.client.port if request.client else None,
            "principal": {
                "user_id": principal.user_id,
                "username": principal.username,
                "roles": sorted(principal.roles),
            },
        }
        hits.append(seen)
        status = int(request.query_params.get("status", "200"))
        if request.query_params.get("as") == "csv":
            return PlainTextResponse(
                "id,name\n1,Ada\n", status_code=status, media_type="text/csv", headers={"x-upstream": "echo"}
            )
        return JSONResponse(seen, status_code=status, headers={"x-upstream": "echo"})

    return create_app(settings=settings, title="Echo department", runtime=None, protected=[router])


@pytest.fixture(scope="session")
async def upstream() -> AsyncIterator[Upstream]:
    from crm_platform.testing import eventually

    hits: list[dict[str, Any]] = []
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        # proxy_headers off: the echo reports the TCP peer's port (the gateway's pooled connection)
        uvicorn.Config(
            _upstream_app(hits), log_config=None, access_log=False, lifespan="off", proxy_headers=False
        )
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))

    async def started() -> bool:
        return server.started

    await eventually(started, timeout=10, what="upstream server")
    yield Upstream(f"http://127.0.0.1:{port}", hits)
    server.should_exit = True
    await task
    sock.close()


@pytest.fixture
def gateway_settings(
    make_settings: Callable[..., ServiceSettings], upstream: Upstream
) -> Callable[..., GatewaySettings]:
    """Gateway settings on a fresh database; leads, sales and analytics are the echo upstream,
    service-desk points at a port where nothing listens."""

    def build(**env: Any) -> GatewaySettings:
        base = make_settings("gateway").model_dump()
        values: dict[str, Any] = {
            **base,
            "CRM_LEADS_URL": upstream.url,
            "CRM_SALES_URL": upstream.url,
            "CRM_ANALYTICS_URL": upstream.url,
            "CRM_SERVICE_DESK_URL": f"http://127.0.0.1:{free_port()}",
            "CRM_UPSTREAM_TIMEOUT_SECONDS": 1.0,
            "CRM_UPSTREAM_CONNECT_TIMEOUT_SECONDS": 1.0,
            "CRM_SESSION_CHECK_SECONDS": 0,
        }
        values.update(env)
        return GatewaySettings.model_validate(values)

    return build


@pytest.fixture
def gateway(gateway_settings: Callable[..., GatewaySettings]) -> Callable[..., Any]:
    """``async with gateway(**env) as client``: a running gateway on a fresh database."""

    @asynccontextmanager
    async def start(settings: GatewaySettings | None = None, **env: Any) -> AsyncIterator[httpx.AsyncClient]:
        from crm_platform.testing import running_app

        app = create_gateway(settings or gateway_settings(**env))
        async with running_app(app) as client:
            yield client

    return start


async def login(client: httpx.AsyncClient, username: str = "admin", password: str = ADMIN_PASSWORD) -> str:
    r = await client.post("/auth/login", json={"username": username, "password": password})
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def create_user(
    client: httpx.AsyncClient,
    admin_token: str,
    username: str,
    roles: list[str],
    password: str = "a-good-long-password",
) -> dict[str, Any]:
    r = await client.post(
        "/users",
        headers=bearer(admin_token),
        json={"username": username, "password": password, "roles": roles},
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


@pytest.fixture
def helpers() -> Any:
    return SimpleNamespace(login=login, bearer=bearer, create_user=create_user, admin_password=ADMIN_PASSWORD)
