"""Role x route: every route of every service, through the gateway, with every role and with no,
forged, expired and revoked tokens.

The routes come from the services' own OpenAPI documents (and their role checks from the
routes' ``require_roles`` dependencies); the gateway's rules from its route table. The
table must cover every route (deny by default: a route without a rule is unreachable) and
let through exactly the roles the service itself accepts.
"""

from __future__ import annotations

import importlib
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio
from crm_platform.auth import Role, RoleCheck
from crm_platform.field_rules import PseudonymEdge
from crm_platform.testing import auth_headers, expired_token, forged_tokens, running_app
from fastapi import FastAPI
from fastapi.routing import APIRoute
from gateway.domain.routes import (
    PUBLIC_ROUTES,
    ROUTE_TABLE,
    RouteRule,
    find_public_route,
    find_rule,
    normalize_path,
)
from gateway.main import create_app as create_gateway
from gateway.settings import GatewaySettings
from gateway.upstream import Upstreams

APPS = {  # service -> (app module, settings module, settings class)
    "leads": ("leads.main", "leads.settings", "LeadsSettings"),
    "sales": ("sales.main", "sales.settings", "SalesSettings"),
    "service-desk": ("service_desk.main", "service_desk.settings", "ServiceDeskSettings"),
    "analytics": ("analytics.main", "analytics.settings", "AnalyticsSettings"),
}
OPS = {"/healthz", "/readyz", "/metrics"}  # probed inside the cluster, never through the gateway
PUBLIC = "/public/"  # a service's routes without a token: the gateway's public table, not its roles
METHODS = ("get", "post", "put", "patch", "delete")
ADMIN_PASSWORD = "admin-dev-password"


@dataclass(frozen=True)
class ServiceRoute:
    service: str
    method: str
    template: str  # as in the OpenAPI document, e.g. /inbox/{lead_id}/accept
    roles: frozenset[str] | None  # None: any authenticated user (the service checks records)

    @property
    def path(self) -> str:
        """A concrete path: every ``{parameter}`` filled with a plausible id."""
        return re.sub(r"\{[^}]+\}", "x-1", self.template)

    def __str__(self) -> str:
        return f"{self.method} {self.service}{self.template}"


def _api_routes(routes: list[Any]) -> Iterator[APIRoute]:
    for r in routes:
        if isinstance(r, APIRoute):
            yield r
        elif hasattr(r, "original_router"):  # FastAPI >= 0.16x mounts included routers lazily
            yield from _api_routes(r.original_router.routes)


def _roles(dependant: Any) -> frozenset[str] | None:
    """The roles every ``require_roles`` on the route lets through (their intersection)."""
    found: frozenset[str] | None = None
    if isinstance(dependant.call, RoleCheck):
        found = frozenset(str(r) for r in dependant.call.allowed)
    for sub in dependant.dependencies:
        inner = _roles(sub)
        if inner is not None:
            found = inner if found is None else found & inner
    return found


def _service_app(service: str) -> FastAPI:
    """The service's app as it is deployed (nothing is started: no database, no broker)."""
    module, settings_module, settings_class = APPS[service]
    settings = getattr(importlib.import_module(settings_module), settings_class).model_validate(
        {"KAFKA_BOOTSTRAP_SERVERS": "unused:9092", "MONGODB_URI": "mongodb://127.0.0.1:1", "CRM_ENV": "test"}
    )
    app: FastAPI = importlib.import_module(module).create_app(settings)
    return app


def service_routes(public: bool = False) -> list[ServiceRoute]:
    """Every route each service documents in its OpenAPI, with the roles it requires (or, with
    ``public``, only the routes under ``/public/``, which need no token)."""
    out: list[ServiceRoute] = []
    for service in APPS:
        app = _service_app(service)
        declared = {
            (m.upper(), route.path): _roles(route.dependant)
            for route in _api_routes(app.router.routes)
            for m in route.methods or ()
        }
        for template, operations in app.openapi()["paths"].items():
            if template in OPS or template.startswith(PUBLIC) != public:
                continue
            for method in operations:
                if method in METHODS:
                    key = (method.upper(), template)
                    assert key in declared, f"{service}: {key} in the OpenAPI but not among the routes"
                    out.append(ServiceRoute(service, method.upper(), template, declared[key]))
    return out


ROUTES = service_routes()
PUBLIC_SERVICE_ROUTES = service_routes(public=True)


def uncovered(routes: list[ServiceRoute], table: tuple[RouteRule, ...]) -> list[str]:
    """Why routes are not (rightly) covered by the table: no rule, or different roles."""
    problems = []
    for r in routes:
        rule = find_rule(r.service, r.method, normalize_path(r.path), table)
        if rule is None:
            problems.append(f"{r}: no gateway rule (refused by default)")
        elif r.roles is not None and {str(x) for x in rule.roles} != set(r.roles):
            allowed = sorted(str(x) for x in rule.roles)
            problems.append(f"{r}: the gateway allows {allowed}, the service {sorted(r.roles)}")
    return problems


def test_the_services_have_routes_to_check() -> None:
    assert {r.service for r in ROUTES} == set(APPS)
    assert len(ROUTES) >= 40


def test_every_service_route_has_a_gateway_rule_with_the_service_s_roles() -> None:
    assert uncovered(ROUTES, ROUTE_TABLE) == []


def test_every_public_route_is_in_the_gateway_s_public_table_and_checks_no_role() -> None:
    assert PUBLIC_SERVICE_ROUTES, "the survey links are public routes"
    for r in PUBLIC_SERVICE_ROUTES:
        assert r.roles is None, f"{r} is public but requires roles {r.roles}"
        assert find_public_route(r.service, r.method, r.path) is not None, f"{r}: not in PUBLIC_ROUTES"
    listed = {(p.service, p.pattern) for p in PUBLIC_ROUTES}
    assert all(p.pattern.startswith(PUBLIC) for p in PUBLIC_ROUTES), listed


def test_a_route_added_without_a_rule_fails_the_check() -> None:
    added = ServiceRoute("sales", "POST", "/territories/{territory_id}/split", frozenset({"sales_manager"}))
    assert uncovered([*ROUTES, added], ROUTE_TABLE) == [
        "POST sales/territories/{territory_id}/split: no gateway rule (refused by default)"
    ]


# --- through the running gateway --------------------------------------------------------------


@dataclass
class Gateway:
    client: httpx.AsyncClient
    forwarded: list[str]
    revoked: dict[str, str]  # how it was revoked -> token


class _Body(httpx.AsyncByteStream):
    """A response body still to be streamed, as from a real upstream (the gateway streams it)."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b'{"ok": true, "email": "ada@example.com"}'  # a person, as a department would answer


def _recording_upstreams(urls: dict[str, str], forwarded: list[str]) -> Upstreams:
    def answer(request: httpx.Request) -> httpx.Response:
        forwarded.append(f"{request.method} {request.url.path}")
        return httpx.Response(200, headers={"content-type": "application/json"}, stream=_Body())

    return Upstreams(urls, transport=httpx.MockTransport(answer))


async def _revoked_tokens(client: httpx.AsyncClient) -> dict[str, str]:
    """An admin token after logout, and a token of every role whose user was then deactivated."""
    login = {"username": "admin", "password": ADMIN_PASSWORD}
    admin = (await client.post("/auth/login", json=login)).json()["access_token"]
    h = {"Authorization": f"Bearer {admin}"}
    logged_out = (await client.post("/auth/login", json=login)).json()["access_token"]
    assert (
        await client.post("/auth/logout", headers={"Authorization": f"Bearer {logged_out}"})
    ).status_code == 204
    credentials = {"username": "everyone", "password": "a-good-long-password"}
    user = {**credentials, "roles": [str(r) for r in Role]}
    created = (await client.post("/users", headers=h, json=user)).json()
    everyone = (await client.post("/auth/login", json=credentials)).json()
    r = await client.patch(f"/users/{created['id']}", headers=h, json={"active": False})
    assert r.status_code == 200, r.text
    return {"logged_out": logged_out, "deactivated": everyone["access_token"]}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateway(kafka_bootstrap: str, mongodb_uri: str) -> AsyncIterator[Gateway]:
    settings = GatewaySettings.model_validate(
        {
            "CRM_ENV": "test",
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "CRM_PROVISION_TOPICS": False,
            "MONGODB_URI": mongodb_uri,
            "MONGODB_DATABASE": f"t_gateway_matrix_{uuid.uuid4().hex[:8]}",
        }
    )
    app = create_gateway(settings)
    forwarded: list[str] = []
    app.state.upstreams = _recording_upstreams(settings.upstreams, forwarded)
    async with running_app(app) as client:
        yield Gateway(client, forwarded, await _revoked_tokens(client))
    await app.state.upstreams.aclose()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _callers(gw: Gateway) -> dict[str, tuple[dict[str, str], Callable[[ServiceRoute], int]]]:
    """caller name -> (headers, expected status for a route)."""

    def by_role(role: Role) -> Callable[[ServiceRoute], int]:
        def expected(route: ServiceRoute) -> int:
            rule = find_rule(route.service, route.method, normalize_path(route.path))
            return 200 if rule is not None and role in rule.roles else 403

        return expected

    refused: Callable[[ServiceRoute], int] = lambda _: 401  # noqa: E731
    callers = {f"role:{r}": (auth_headers([str(r)], f"matrix-{r}"), by_role(r)) for r in Role}
    callers["no token"] = ({}, refused)
    callers["expired"] = (_bearer(expired_token(["admin"])), refused)
    callers |= {f"forged:{how}": (_bearer(t), refused) for how, t in forged_tokens(["admin"]).items()}
    callers |= {f"revoked:{how}": (_bearer(t), refused) for how, t in gw.revoked.items()}
    return callers


@pytest.mark.integration
async def test_every_route_with_every_caller(gateway: Gateway) -> None:
    failures = []
    calls = 0
    for caller, (headers, expected) in _callers(gateway).items():
        for route in ROUTES:
            before = len(gateway.forwarded)
            r = await gateway.client.request(
                route.method, f"/api/{route.service}{route.path}", headers=headers
            )
            calls += 1
            want = expected(route)
            reached = len(gateway.forwarded) > before
            if r.status_code != want or reached != (want == 200):
                failures.append(f"{caller} {route}: {r.status_code} (want {want}), forwarded={reached}")
    assert not failures, f"{len(failures)} of {calls} calls wrong:\n" + "\n".join(failures[:40])


@pytest.mark.integration
async def test_public_routes_need_no_token_and_only_they_are_public(gateway: Gateway) -> None:
    """Reached at /public/<service>/... without credentials (forwarded without any); never at
    /api/<service>/public/... (no rule: 403 for every role); anything else under /public/ is 404."""
    failures = []
    for route in PUBLIC_SERVICE_ROUTES:
        before = len(gateway.forwarded)
        outside = route.path.removeprefix("/public")
        r = await gateway.client.request(
            route.method, f"/public/{route.service}{outside}", headers={"Authorization": "Bearer forged"}
        )
        if r.status_code != 200 or len(gateway.forwarded) != before + 1:
            failures.append(f"public {route}: {r.status_code}")
        for role in Role:
            r = await gateway.client.request(
                route.method, f"/api/{route.service}{route.path}", headers=auth_headers([str(role)], "m")
            )
            if r.status_code != 403:
                failures.append(f"/api {route} as {role}: {r.status_code}")
    for method, path in (
        ("GET", "/public/service-desk/accounts"),
        ("DELETE", "/public/service-desk/surveys/x"),
    ):
        before = len(gateway.forwarded)
        r = await gateway.client.request(method, path)
        if r.status_code not in (404, 405) or len(gateway.forwarded) != before:
            failures.append(f"{method} {path}: {r.status_code}")
    assert not failures, failures


# -- field-level rules (issue 9): pseudonyms are applied once, by each department ---------------


@pytest.mark.parametrize("service", sorted(APPS))
def test_every_service_pseudonymises_every_answer_in_one_place(service: str) -> None:
    """create_app installs the pseudonym edge on every path of every department: no route, nor a
    route an administrator opens to analysts later, can answer them without it."""
    [edge] = [m for m in _service_app(service).user_middleware if m.cls is PseudonymEdge]
    applies: Callable[[str], bool] = edge.kwargs["applies"]  # type: ignore[assignment]
    assert all(applies(path) for path in ("/leads", "/inbox/export", "/tickets/t-1", "/audit", "/anything"))


@pytest.mark.integration
async def test_the_gateway_forwards_a_department_s_answer_unchanged_to_an_analyst(gateway: Gateway) -> None:
    """The department pseudonymised it already: a second pass would hash the pseudonym again."""
    r = await gateway.client.get("/api/leads/leads", headers=auth_headers(["analyst"], "matrix-analyst"))
    assert r.status_code == 200, r.text
    assert r.json()["email"] == "ada@example.com"
