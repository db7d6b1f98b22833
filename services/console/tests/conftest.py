"""A console wired to a fake gateway (httpx MockTransport): pages tested without a network."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from console.bootstrap import build_app
from console.settings import ConsoleSettings

pytest_plugins = ["crm_platform.testing"]

USERS = {
    "maria": ("maria-pass", ["marketing"]),
    "rita": ("rita-pass", ["sales_rep"]),
    "admin": ("admin-pass", ["admin"]),
}


def token(username: str, roles: list[str], ttl: float = 900) -> str:
    now = time.time()
    claims = {"sub": f"user-{username}", "name": username, "roles": roles, "iat": now, "exp": now + ttl}
    return jwt.encode(claims, "not-verified-by-the-console-" * 2, algorithm="HS256")


@dataclass
class FakeGateway:
    """Just enough of the gateway's public API for the pages under test."""

    access_ttl: float = 900
    refresh_ok: bool = True
    revoked: set[str] = field(default_factory=set)  # access tokens the API answers 401 to
    leads: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, str, Any]] = field(default_factory=list)
    refresh_tokens: dict[str, str] = field(default_factory=dict)  # refresh -> username

    def issue(self, username: str) -> dict[str, Any]:
        refresh = f"r-{username}-{len(self.refresh_tokens)}"
        self.refresh_tokens[refresh] = username
        return {
            "access_token": token(username, USERS[username][1], self.access_ttl),
            "token_type": "bearer",
            "expires_in": int(self.access_ttl),
            "refresh_token": refresh,
            "refresh_expires_in": 28800,
            "roles": USERS[username][1],
        }

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        payload: Any = httpx.Response(200, content=body).json() if body else None
        self.calls.append((request.method, request.url.path, payload))
        path = request.url.path
        if path == "/auth/login":
            user = USERS.get(payload["username"])
            if user is None or user[0] != payload["password"]:
                return httpx.Response(
                    401, json={"error": "unauthorized", "message": "unknown user or wrong password"}
                )
            return httpx.Response(200, json=self.issue(payload["username"]))
        if path == "/auth/refresh":
            username = self.refresh_tokens.pop(payload["refresh_token"], None)
            if not self.refresh_ok or username is None:
                return httpx.Response(401, json={"error": "unauthorized", "message": "session ended"})
            return httpx.Response(200, json=self.issue(username))
        auth = request.headers.get("authorization", "").removeprefix("Bearer ")
        if auth in self.revoked:
            return httpx.Response(401, json={"error": "unauthorized", "message": "token revoked"})
        claims = jwt.decode(auth, options={"verify_signature": False})
        if claims["exp"] < time.time():
            return httpx.Response(401, json={"error": "unauthorized", "message": "token expired"})
        return self.api(request.method, path, payload, claims)

    def api(self, method: str, path: str, payload: Any, claims: dict[str, Any]) -> httpx.Response:
        if path == "/auth/me":
            return httpx.Response(
                200,
                json={
                    "id": claims["sub"],
                    "username": claims["name"],
                    "display_name": claims["name"].title(),
                    "roles": claims["roles"],
                },
            )
        if path == "/auth/logout":
            return httpx.Response(204)
        if path == "/api/leads/leads" and method == "POST":
            if "@" not in payload["email"]:
                return httpx.Response(
                    422,
                    json={
                        "error": "validation_error",
                        "message": "invalid input: body.email",
                        "fields": [{"field": "body.email", "message": "not an email address"}],
                    },
                )
            lead = {"id": f"lead-{len(self.leads) + 1}", **payload}
            self.leads[lead["id"]] = lead
            return httpx.Response(201, json={"merged": False, "lead": lead})
        if path == "/api/leads/leads" and method == "GET":
            return httpx.Response(200, json={"items": [], "next_cursor": None})
        return httpx.Response(404, json={"error": "not_found", "message": f"no fake for {method} {path}"})


@pytest.fixture
def fake_gateway() -> FakeGateway:
    return FakeGateway()


@pytest.fixture
def console_settings(tmp_path: Path) -> Callable[..., ConsoleSettings]:
    def build(**env: Any) -> ConsoleSettings:
        key = tmp_path / "session.key"
        key.write_bytes(b"k" * 48)
        values = {
            "CRM_ENV": "test",
            "CRM_CONSOLE_SESSION_KEY_FILE": str(key),
            "CRM_CONSOLE_GATEWAY_URL": "http://gateway.test",
            **env,
        }
        return ConsoleSettings.model_validate(values)

    return build


@pytest.fixture
async def console(
    fake_gateway: FakeGateway, console_settings: Callable[..., ConsoleSettings]
) -> AsyncIterator[httpx.AsyncClient]:
    app = build_app(console_settings(), transport=httpx.MockTransport(fake_gateway.handle))
    # https: the cookies are Secure outside local, so the client only sends them over TLS.
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="https://console.test"
    ) as c:
        yield c
