"""``POST /leads`` without FastAPI's per-request dependency solving.

A capture's own checks and parsing took about a sixth of leads' CPU per capture through
FastAPI's ``solve_dependencies`` (docs/performance.md, "Ninth session, capture"): the
dependency tree walked per request, each dependency's cache key, the body's content type
parsed as an e-mail header. :class:`CaptureRoute` keeps the route as FastAPI declares it (its
OpenAPI entry, its dependencies) and serves a request that passes every check by making them
itself, in the order FastAPI solves them: the token (``current_principal``, 401), the
permission policy (``_permitted``, 403), the router's and the route's role checks (403), the
custom field definitions, then the JSON body validated by the route's own body field (FastAPI's
validation, the same model). The answer is serialized by FastAPI's ``serialize_response`` with
the route's response field, as FastAPI does.

Anything that does not pass (no token, a role or permission refused, a body that is not
``application/json`` or not valid JSON, or does not validate, or any error while checking) is
handed to FastAPI's own handler for the route, unchanged: the same 401, 403 and 422 answers
(and the same error for anything else), from the same code as before. The checks have no side
effect but the request's audit context, which FastAPI's handler sets again to the same values.
``CAPTURE_DEPENDENCIES`` names what the route declares; a test fails when one is added that this
handler does not make.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from crm_platform.auth import RoleCheck, current_principal
from crm_platform.permission_policy import enforce_permission
from fastapi import Request, Response
from fastapi.routing import APIRoute, serialize_response

from leads.api.deps import get_capture_groups

# What the capture route declares (the protected routers' checks, the leads router's and the
# route's role checks, the endpoint's own dependencies), by name: what CaptureRoute checks.
CAPTURE_DEPENDENCIES = frozenset(
    {"current_principal", "_permitted", "RoleCheck", "get_capture_groups", "load"}
)

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class CaptureRoute(APIRoute):
    """The capture route; see the module. ``role_checks`` are the route's ``require_roles``
    dependencies (the router's, then its own), ``fields`` the custom field set's loader."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.role_checks = tuple(
            d.dependency for d in self.dependencies if isinstance(d.dependency, RoleCheck)
        )
        loaders = [d.call for d in self.dependant.dependencies if d.name == "fields"]
        self.fields: Callable[[Request], Coroutine[Any, Any, Any]] = loaders[0]  # type: ignore[assignment]

    def get_route_handler(self) -> Handler:
        full = super().get_route_handler()  # FastAPI's: every answer the lean path does not give

        async def handle(request: Request) -> Response:
            try:
                checked = await self._checked(request)
            except Exception:  # noqa: BLE001 - FastAPI's handler gives the error its answer
                checked = None
            if checked is None:
                return await full(request)
            return await self._capture(request, *checked)

        return handle

    async def _checked(self, request: Request) -> tuple[Any, Any] | None:
        """The body and field set of a request that passes every check (None: let FastAPI answer)."""
        principal = await current_principal(request)
        await enforce_permission(request, principal.roles)
        for check in self.role_checks:
            await check(request, principal)
        assert self.body_field is not None
        fields = await self.fields(request)
        content_type = request.headers.get("content-type", "")
        if content_type.partition(";")[0].strip().lower() != "application/json":
            return None
        body = await request.body()
        if not body:
            return None
        value, errors = self.body_field.validate(json.loads(body), {}, loc=("body",))
        return None if errors else (value, fields)

    async def _capture(self, request: Request, body: Any, fields: Any) -> Response:
        """The endpoint and its answer as FastAPI builds them (the status the endpoint set on
        its ``response`` parameter, else the route's; the response model's JSON)."""
        sub = Response()
        del sub.headers["content-length"]
        # FastAPI's "not set by the endpoint"
        sub.status_code = None  # type: ignore[assignment]
        groups = await get_capture_groups(request)
        result = await self.endpoint(body=body, response=sub, groups=groups, fields=fields)
        content = await serialize_response(
            field=self.response_field,
            response_content=result,
            include=self.response_model_include,
            exclude=self.response_model_exclude,
            by_alias=self.response_model_by_alias,
            exclude_unset=self.response_model_exclude_unset,
            exclude_defaults=self.response_model_exclude_defaults,
            exclude_none=self.response_model_exclude_none,
            dump_json=True,
        )
        status_code = sub.status_code or self.status_code or 200
        response = Response(content=content, media_type="application/json", status_code=status_code)
        response.headers.raw.extend(sub.headers.raw)
        return response
