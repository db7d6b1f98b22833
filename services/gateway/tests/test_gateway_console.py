"""The gateway serves the web console at / : forwarded as is, cookies never kept or shared."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse


@pytest.fixture(scope="module")
async def console_upstream() -> AsyncIterator[str]:
    """A stand-in console: echoes what it got and sets a session cookie on /login."""
    from crm_platform.testing import eventually

    app = FastAPI()

    @app.api_route("/{path:path}", methods=["GET", "HEAD", "POST"])
    async def echo(path: str, request: Request) -> Response:
        seen: dict[str, Any] = {
            "method": request.method,
            "path": request.url.path,
            "query": request.url.query,
            "cookie": request.headers.get("cookie"),
            "authorization": request.headers.get("authorization"),
            "body": (await request.body()).decode(),
        }
        response = JSONResponse(seen)
        if path == "login":
            response.set_cookie("crm_session", "sealed-for-the-first-user", httponly=True, samesite="lax")
        return response

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))

    async def started() -> bool:
        return server.started

    await eventually(started, timeout=10, what="console stand-in")
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    await task
    sock.close()


async def test_the_console_is_served_at_the_root_with_path_query_body_and_cookies(gateway, console_upstream):
    async with gateway(CRM_CONSOLE_URL=console_upstream) as client:
        root = await client.get("/")
        assert root.status_code == 200
        assert root.json()["path"] == "/"
        page = await client.get("/leads?status=new&channel=webinar", headers={"cookie": "crm_session=abc"})
        assert page.json()["path"] == "/leads"
        assert page.json()["query"] == "status=new&channel=webinar"
        assert page.json()["cookie"] == "crm_session=abc"
        form = await client.post(
            "/leads/new", content=b"name=Ada", headers={"content-type": "application/x-www-form-urlencoded"}
        )
        assert form.json()["body"] == "name=Ada"
        login = await client.post("/login", content=b"")
        assert "crm_session=sealed-for-the-first-user" in login.headers["set-cookie"]


async def test_one_users_session_cookie_never_reaches_another_user(gateway, console_upstream):
    async with gateway(CRM_CONSOLE_URL=console_upstream) as client:
        await client.post("/login", content=b"")
        client.cookies.clear()  # another browser: no cookies of its own
        other = await client.get("/inbox")
        assert other.json()["cookie"] is None


async def test_the_gateways_own_prefixes_never_reach_the_console(gateway, console_upstream):
    async with gateway(CRM_CONSOLE_URL=console_upstream) as client:
        for path in ("/api/nope/x", "/auth/nope", "/users/x/y/z", "/internal/nope", "/docs/nope/more"):
            r = await client.get(path)
            assert r.headers["content-type"].startswith("application/json"), path
            assert r.status_code in (401, 403, 404), (path, r.status_code)
            assert "path" not in r.json() or r.json().get("error"), path


async def test_a_console_that_is_down_is_a_503_not_a_hang(gateway, console_upstream):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        nobody = s.getsockname()[1]
    async with gateway(CRM_CONSOLE_URL=f"http://127.0.0.1:{nobody}") as client:
        r = await client.get("/")
        assert r.status_code == 503
        assert r.json()["service"] == "console"
