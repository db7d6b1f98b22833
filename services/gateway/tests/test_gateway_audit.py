"""Every write route of the gateway leaves an audit entry, or says why it changes no record
(issue 9); the auditor role reads the gateway's audit log and nothing else; secrets are never
written to it. Real mongod, the gateway app on a fresh database."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio
from crm_platform.permissions import DEFAULT_POLICY
from crm_platform.testing import assert_audited, write_routes
from fastapi import FastAPI
from gateway.main import create_app as create_gateway
from gateway.settings import GatewaySettings

pytestmark = pytest.mark.integration
ADMIN_PASSWORD = "admin-dev-password"
PASSWORD = "a-good-long-password"


@dataclass
class Gw:
    app: FastAPI
    client: httpx.AsyncClient
    admin: dict[str, str]

    @property
    def db(self) -> Any:
        return self.app.state.runtime.store.db

    async def new_user(self, *roles: str) -> dict[str, Any]:
        body = {"username": f"u-{uuid.uuid4().hex[:8]}", "password": PASSWORD, "roles": list(roles)}
        r = await self.client.post("/users", json=body, headers=self.admin)
        assert r.status_code == 201, r.text
        return dict(r.json())


async def _token(client: httpx.AsyncClient, username: str, password: str) -> dict[str, Any]:
    r = await client.post("/auth/login", json={"username": username, "password": password})
    assert r.status_code == 200, r.text
    return dict(r.json())


@pytest_asyncio.fixture(loop_scope="session")
async def gw(gateway_settings: Callable[..., GatewaySettings]) -> AsyncIterator[Gw]:
    from crm_platform.testing import running_app

    app = create_gateway(gateway_settings())
    async with running_app(app) as client:
        token = (await _token(client, "admin", ADMIN_PASSWORD))["access_token"]
        yield Gw(app, client, {"Authorization": f"Bearer {token}"})


async def _create(gw: Gw) -> httpx.Response:
    body = {"username": f"u-{uuid.uuid4().hex[:8]}", "password": PASSWORD, "roles": ["auditor"]}
    return await gw.client.post("/users", json=body, headers=gw.admin)


async def _update(gw: Gw) -> httpx.Response:
    user = await gw.new_user("analyst")
    return await gw.client.patch(f"/users/{user['id']}", json={"roles": ["auditor"]}, headers=gw.admin)


async def _permissions(gw: Gw) -> httpx.Response:
    body = {"permissions": sorted(DEFAULT_POLICY.holds("auditor"))}
    return await gw.client.put("/permissions/roles/auditor", json=body, headers=gw.admin)


async def _erasure(gw: Gw) -> httpx.Response:
    body = {"email": f"someone-{uuid.uuid4().hex[:8]}@example.com"}
    return await gw.client.post("/erasure-requests", json=body, headers=gw.admin)


RECIPES: dict[str, Callable[[Gw], Awaitable[httpx.Response]]] = {
    "POST /users": _create,
    "PATCH /users/{user_id}": _update,
    "PUT /permissions/roles/{role}": _permissions,
    "POST /erasure-requests": _erasure,
}
RECORD_TYPES = {
    "PUT /permissions/roles/{role}": "permission_policy",
    "POST /erasure-requests": "erasure_requests",
}
NOT_RECORD_CHANGES = {
    "POST /auth/login": "opens a session and counts the attempt: security events, logged, not records",
    "POST /auth/refresh": "rotates a session's refresh token: not a record",
    "POST /auth/logout": "ends a session (its tokens revoked): not a record",
    **{
        f"{method} {prefix}/{{service}}/{{path}}": "forwarded: the department service audits its own change"
        for method in ("POST", "PUT", "PATCH", "DELETE")
        for prefix in ("/api", "/public")
        if prefix == "/api" or method == "POST"
    },
}


async def test_every_write_route_is_checked(gw: Gw) -> None:
    routes = write_routes(gw.app)
    assert routes - set(RECIPES) - set(NOT_RECORD_CHANGES) == set(), "write routes with no audit check"
    assert (set(RECIPES) | set(NOT_RECORD_CHANGES)) - routes == set(), "checks of routes that are gone"


@pytest.mark.parametrize("route", sorted(RECIPES))
async def test_write_route_is_audited(gw: Gw, route: str) -> None:
    entries = await assert_audited(gw.db, await RECIPES[route](gw))
    assert {e["record"]["type"] for e in entries} == {RECORD_TYPES.get(route, "users")}


async def test_a_password_change_is_audited_without_the_hash(gw: Gw) -> None:
    user = await gw.new_user("analyst")
    body = {"password": "another-long-password", "display_name": "Ann"}
    r = await gw.client.patch(f"/users/{user['id']}", json=body, headers=gw.admin)
    [entry] = await assert_audited(gw.db, r)
    changes = {c["field"]: c for c in entry["changes"]}
    hidden = {"field": "password_hash", "before": "[redacted]", "after": "[redacted]"}
    assert changes["password_hash"] == hidden
    assert changes["display_name"]["after"] == "Ann"
    created = await gw.client.get("/audit", params={"record_type": "users", "record_id": user["id"]},
                                  headers=gw.admin)  # fmt: skip
    insert = created.json()["items"][-1]
    assert insert["action"] == "insert"
    assert {"field": "password_hash", "before": None, "after": "[redacted]"} in insert["changes"]
    assert PASSWORD not in created.text
    assert "argon2" not in created.text


async def test_an_auditor_reads_the_audit_log_and_changes_nothing(gw: Gw) -> None:
    auditor = await gw.new_user("auditor")
    token = (await _token(gw.client, auditor["username"], PASSWORD))["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    r = await gw.client.get("/audit", params={"record_type": "users"}, headers=headers)
    assert r.status_code == 200, r.text
    assert auditor["id"] in {item["record"]["id"] for item in r.json()["items"]}
    export = await gw.client.get("/audit/export", headers=headers)
    assert export.status_code == 200
    assert auditor["id"] in export.text
    assert (await gw.client.get("/users", headers=headers)).status_code == 403
    refused = await gw.client.post("/users", json={"username": "x", "password": PASSWORD, "roles": ["admin"]},
                                   headers=headers)  # fmt: skip
    assert refused.status_code == 403
