"""The error answers every route can give, documented once for every service.

The app factory calls :func:`document_error_responses` on each router before
mounting it; each API route's OpenAPI entry then lists, with the shared
:class:`~crm_platform.errors.ErrorBody` model, the statuses the platform itself
produces for it:

* 401 and 403 on routes behind the token check;
* 404 on routes with a path parameter (the named record does not exist);
* 409 on routes that change state (a conflicting state or a reused
  Idempotency-Key);
* 413 on routes that take a body (above ``CRM_MAX_REQUEST_BYTES``);
* 422 on every route (invalid input or a broken business rule);
* 503 with ``Retry-After`` on every route (the database did not answer in time).

A route keeps any description it declares itself for the same status.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.routing import APIRoute
from fastapi.utils import create_model_field

from crm_platform.errors import ErrorBody

OPS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}
}

DESCRIPTIONS = {
    401: "Missing, invalid or expired bearer token",
    403: "The token's roles do not allow this",
    404: "Not found",
    409: "Conflicts with the current state, or an Idempotency-Key reused for a different request",
    413: "Request body larger than the service's limit",
    422: "Invalid input (names the fields) or a broken business rule",
    503: "The service's database did not answer in time; retry after Retry-After seconds",
}


def error_statuses(route: APIRoute, *, protected: bool) -> list[int]:
    methods = route.methods or set()
    statuses = [422, 503]
    if protected:
        statuses += [401, 403]
    if route.param_convertors:
        statuses.append(404)
    if methods & BODY_METHODS or "DELETE" in methods:
        statuses.append(409)
    if methods & BODY_METHODS:
        statuses.append(413)
    return sorted(statuses)


def document_error_responses(router: APIRouter, *, protected: bool) -> APIRouter:
    """Add the platform's error answers to every route of ``router`` (before it is mounted)."""
    for route in router.routes:
        included = getattr(route, "original_router", None)
        if isinstance(included, APIRouter):
            document_error_responses(included, protected=protected)
        if not isinstance(route, APIRoute) or route.path in OPS_PATHS or not route.include_in_schema:
            continue
        for status in error_statuses(route, protected=protected):
            if status in route.responses or str(status) in route.responses:
                continue
            entry: dict[str, Any] = {"model": ErrorBody, "description": DESCRIPTIONS[status]}
            if status == 503:
                entry["headers"] = RETRY_AFTER
            route.responses[status] = entry
            # FastAPI builds a route's response fields when the route is created.
            route.response_fields[status] = create_model_field(
                name=f"Response_{status}_{route.unique_id}", type_=ErrorBody, mode="serialization"
            )
    return router
