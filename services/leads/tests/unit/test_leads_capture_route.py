"""The capture route's handler makes its checks itself (``CaptureRoute``, no per-request
dependency solving): what the route declares must stay what that handler does."""

from __future__ import annotations

from typing import Any

import pytest
from crm_platform.testing import OFFLINE_SETTINGS, dependency_names
from fastapi.routing import iter_route_contexts
from leads.api import capture_route
from leads.api import leads as leads_api
from leads.api.deps import READERS, WRITERS
from leads.main import create_app
from leads.settings import LeadsSettings

BASE = OFFLINE_SETTINGS


@pytest.fixture(scope="module")
def capture() -> Any:
    app = create_app(LeadsSettings.model_validate(BASE))
    found = [
        ctx
        for ctx in iter_route_contexts(app.routes)
        if getattr(ctx, "endpoint", None) is leads_api.capture_lead
    ]
    assert len(found) == 1
    return found[0]


def test_the_capture_route_is_served_by_the_lean_handler(capture: Any) -> None:
    assert isinstance(capture.original_route, capture_route.CaptureRoute)
    assert capture.path == "/leads"
    assert capture.methods == {"POST"}


def test_the_capture_route_declares_exactly_the_checks_the_lean_handler_makes(capture: Any) -> None:
    """A dependency added to the protected routers (crm_platform.app), the leads router or the
    route would be skipped by CaptureRoute's handler: it must be added there too."""
    assert dependency_names(capture.dependant) == capture_route.CAPTURE_DEPENDENCIES


def test_the_lean_handler_checks_the_routers_roles_then_the_routes(capture: Any) -> None:
    route = capture.original_route
    assert [check.allowed for check in route.role_checks] == [frozenset(READERS), frozenset(WRITERS)]
    assert route.fields.__qualname__.startswith("fields_of.")
