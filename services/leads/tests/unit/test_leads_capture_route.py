"""The capture and single behaviour routes' handlers make their checks themselves
(``CaptureRoute``, ``BehaviourRoute``, no per-request dependency solving): what each route
declares must stay what its handler does."""

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


def route_of(endpoint: Any) -> Any:
    """The one route of a fresh leads app whose endpoint is ``endpoint``."""
    app = create_app(LeadsSettings.model_validate(BASE))
    found = [ctx for ctx in iter_route_contexts(app.routes) if getattr(ctx, "endpoint", None) is endpoint]
    assert len(found) == 1
    return found[0]


@pytest.fixture(scope="module")
def capture() -> Any:
    return route_of(leads_api.capture_lead)


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


@pytest.fixture(scope="module")
def behaviour() -> Any:
    return route_of(leads_api.record_behaviour)


def test_the_single_behaviour_route_is_served_by_the_lean_handler(behaviour: Any) -> None:
    assert isinstance(behaviour.original_route, capture_route.BehaviourRoute)
    assert behaviour.path == "/leads/{lead_id}/behaviours"
    assert behaviour.methods == {"POST"}


def test_the_behaviour_route_declares_exactly_the_checks_the_lean_handler_makes(behaviour: Any) -> None:
    assert dependency_names(behaviour.dependant) == capture_route.BEHAVIOUR_DEPENDENCIES
    route = behaviour.original_route
    assert [check.allowed for check in route.role_checks] == [frozenset(READERS), frozenset(WRITERS)]
    assert route.lead_id.name == "lead_id"
