"""The forwarding routes' handler makes its checks itself (``ForwardingRoute``, no per-request
dependency solving): what the routes declare must stay what that handler does."""

from __future__ import annotations

from typing import Any

import pytest
from crm_platform.testing import OFFLINE_SETTINGS, dependency_names
from fastapi.routing import iter_route_contexts
from gateway.api import proxy
from gateway.main import create_app
from gateway.settings import GatewaySettings

BASE = OFFLINE_SETTINGS


@pytest.fixture(scope="module")
def forwarding() -> list[Any]:
    app = create_app(GatewaySettings.model_validate(BASE))
    found = [
        ctx
        for ctx in iter_route_contexts(app.routes)
        if getattr(ctx, "endpoint", None) in (proxy.forward, proxy.forward_root)
    ]
    assert len(found) == len(proxy.METHODS) + 1  # one route per method, and the service root
    return found


def test_every_forwarding_route_is_served_by_the_lean_handler(forwarding: list[Any]) -> None:
    assert all(isinstance(ctx.original_route, proxy.ForwardingRoute) for ctx in forwarding)


def test_the_forwarding_routes_declare_exactly_the_checks_the_lean_handler_makes(
    forwarding: list[Any],
) -> None:
    """A dependency added to the protected routers (crm_platform.app) or to the forwarding
    routes would be skipped by ForwardingRoute's handler: it must be added there too."""
    for ctx in forwarding:
        assert dependency_names(ctx.dependant) == proxy.FORWARD_DEPENDENCIES, ctx.path
