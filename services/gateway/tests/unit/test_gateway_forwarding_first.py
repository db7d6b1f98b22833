"""``ForwardingFirst`` (gateway.api.proxy): a forwarded request is matched by the forwarding
routes without the routes mounted before them being tried, except those that could take an
``/api/...`` path (the docs' ``/api/{service}/openapi.json``), which still come first."""

from __future__ import annotations

from typing import Any

import fastapi.routing
import httpx
import pytest
from crm_platform.testing import OFFLINE_SETTINGS
from gateway.api import docs, proxy
from gateway.main import create_app
from gateway.settings import GatewaySettings
from starlette.routing import Match, Mount

BASE = OFFLINE_SETTINGS


@pytest.fixture(scope="module")
def app() -> Any:
    return create_app(GatewaySettings.model_validate(BASE))


def _scope(method: str, path: str) -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "root_path": "", "headers": []}


def test_it_comes_first_and_asks_only_the_routes_that_could_take_an_api_path(app: Any) -> None:
    first = app.router.routes[0]
    assert isinstance(first, proxy.ForwardingFirst)
    earlier: list[Any] = first.earlier
    forwarding: Any = first.forwarding
    assert [route.original_router for route in earlier] == [docs.router]
    assert forwarding.original_router is proxy.router


@pytest.mark.parametrize(
    ("method", "path", "match"),
    [
        ("POST", "/api/leads/leads", Match.FULL),
        ("GET", "/api/sales/inbox/x", Match.FULL),
        ("PATCH", "/api/leads", Match.FULL),
        ("OPTIONS", "/api/leads/leads", Match.PARTIAL),  # no such method: the app's 405, as before
        ("GET", "/api/leads/openapi.json", Match.NONE),  # the docs route's, found by the app's search
        ("GET", "/users", Match.NONE),
        ("GET", "/api", Match.NONE),
    ],
)
def test_what_it_matches(app: Any, method: str, path: str, match: Match) -> None:
    assert app.router.routes[0].matches(_scope(method, path))[0] == match


async def test_a_forwarded_request_tries_no_other_router(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[Any] = []
    original = fastapi.routing._IncludedRouter.matches

    def counting(self: Any, scope: Any) -> Any:
        asked.append(self.original_router)
        return original(self, scope)

    monkeypatch.setattr(fastapi.routing._IncludedRouter, "matches", counting)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        r = await client.post("/api/leads/leads", json={})
    assert r.status_code == 401, r.text  # the forwarding route's own check: no token
    # The docs routes' path patterns do not match the path, so their router is not asked
    # (about 6 us per forwarded request); only the forwarding router is.
    assert {id(r) for r in asked} == {id(proxy.router)}, asked


def test_the_earlier_routes_are_asked_for_a_path_their_patterns_match(
    app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[Any] = []
    original = fastapi.routing._IncludedRouter.matches

    def counting(self: Any, scope: Any) -> Any:
        asked.append(self.original_router)
        return original(self, scope)

    monkeypatch.setattr(fastapi.routing._IncludedRouter, "matches", counting)
    first = app.router.routes[0]
    assert [p.pattern for p in first.earlier_paths] == [
        "^/docs$",
        "^/docs/(?P<service>[^/]+)$",
        "^/api/(?P<service>[^/]+)/openapi\\.json$",
    ]
    for method in ("GET", "POST"):  # a POST is the docs route's 405, as before
        assert first.matches(_scope(method, "/api/leads/openapi.json"))[0] == Match.NONE
    assert [id(r) for r in asked] == [id(docs.router)] * 2


def test_an_earlier_route_without_a_pattern_of_its_own_is_always_asked() -> None:
    asked: list[str] = []

    async def nowhere(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("never served here")

    class Everything(Mount):
        def matches(self, scope: Any) -> Any:
            asked.append(scope["path"])
            return Match.FULL, {}

    installed: Any = create_app(GatewaySettings.model_validate(BASE)).router.routes[0]
    forwarding = installed.forwarding
    first = proxy.ForwardingFirst(forwarding, [Everything("/elsewhere", app=nowhere)])
    assert first.earlier_paths is None
    assert first.matches(_scope("POST", "/api/leads/leads"))[0] == Match.NONE
    assert asked == ["/api/leads/leads"]
