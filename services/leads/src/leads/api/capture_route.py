"""Leads' busiest POST routes without FastAPI's per-request dependency solving.

A capture's own checks and parsing took about a sixth of leads' CPU per capture through
FastAPI's ``solve_dependencies`` (docs/performance.md, "Ninth session, capture"): the
dependency tree walked per request, each dependency's cache key, the body's content type
parsed as an e-mail header. A :class:`LeanRoute` keeps the route as FastAPI declares it (its
OpenAPI entry, its dependencies) and serves a request that passes every check by making them
itself, in the order FastAPI solves them: the token (``current_principal``, 401), the
permission policy (``_permitted``, 403), the router's and the route's role checks (403), the
route's own (:class:`CaptureRoute`: the custom field definitions; :class:`BehaviourRoute`: the
lead id in the path, validated by the route's own path field), then the JSON body validated by
the route's own body field (FastAPI's validation, the same model). The answer is serialized by
FastAPI's ``serialize_response`` with the route's response field, as FastAPI does.
:class:`BehaviourRoute` serves ``POST /leads/{id}/behaviours``, the single qualifying request
of the handoff (docs/performance.md, "Fifteenth session, latency").

Anything that does not pass (no token, a role or permission refused, a body that is not
``application/json`` or not valid JSON, or does not validate, a path parameter that does not
validate, or any error while checking) is handed to FastAPI's own handler for the route,
unchanged: the same 401, 403 and 422 answers (and the same error for anything else), from the
same code as before. The checks have no side effect but the request's audit context, which
FastAPI's handler sets again to the same values. ``CAPTURE_DEPENDENCIES`` and
``BEHAVIOUR_DEPENDENCIES`` name what the routes declare; a test fails when one is added that
the handler does not make.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from crm_platform.auth import Principal, RoleCheck, current_principal
from crm_platform.permission_policy import enforce_permission
from crm_platform.routes import actor_of
from fastapi import Request, Response
from fastapi.routing import APIRoute, serialize_response

from leads.api.deps import get_behaviour_groups, get_capture_groups

# What the capture route declares (the protected routers' checks, the leads router's and the
# route's role checks, the endpoint's own dependencies), by name: what CaptureRoute checks.
CAPTURE_DEPENDENCIES = frozenset(
    {"current_principal", "_permitted", "RoleCheck", "get_capture_groups", "load"}
)
# What the single behaviour route declares: what BehaviourRoute checks (``current_actor`` is
# the principal's actor, ``crm_platform.routes.actor_of``).
BEHAVIOUR_DEPENDENCIES = frozenset(
    {"current_principal", "_permitted", "RoleCheck", "get_behaviour_groups", "current_actor"}
)

Handler = Callable[[Request], Coroutine[Any, Any, Response]]
# What a request that passed every check hands its endpoint: its principal, its body, and the
# route's own (CaptureRoute: the field set; BehaviourRoute: the lead id).
Checked = tuple[Principal, Any, Any]


class LeanRoute(APIRoute):
    """A route served without dependency solving; see the module. ``role_checks`` are the
    route's ``require_roles`` dependencies (the router's, then its own)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.role_checks = tuple(
            d.dependency for d in self.dependencies if isinstance(d.dependency, RoleCheck)
        )

    def get_route_handler(self) -> Handler:
        full = super().get_route_handler()  # FastAPI's: every answer the lean path does not give

        async def handle(request: Request) -> Response:
            try:
                checked = await self._checked(request)
            except Exception:  # noqa: BLE001 - FastAPI's handler gives the error its answer
                checked = None
            if checked is None:
                return await full(request)
            return await self._answer(request, checked)

        return handle

    async def _checked(self, request: Request) -> Checked | None:
        """What a request that passes every check hands its endpoint (None: let FastAPI answer)."""
        principal = await current_principal(request)
        await enforce_permission(request, principal.roles)
        for check in self.role_checks:
            await check(request, principal)
        own = await self._own(request)
        if own is None:
            return None
        assert self.body_field is not None
        content_type = request.headers.get("content-type", "")
        if content_type.partition(";")[0].strip().lower() != "application/json":
            return None
        body = await request.body()
        if not body:
            return None
        value, errors = self.body_field.validate(json.loads(body), {}, loc=("body",))
        return None if errors else (principal, value, own)

    async def _own(self, request: Request) -> Any:
        """The route's own dependency's value, checked (None: let FastAPI answer)."""
        raise NotImplementedError

    async def _call(self, request: Request, response: Response, checked: Checked) -> Any:
        """The endpoint called as FastAPI would call it."""
        raise NotImplementedError

    async def _answer(self, request: Request, checked: Checked) -> Response:
        """The endpoint and its answer as FastAPI builds them (the status the endpoint set on
        its ``response`` parameter, else the route's; the response model's JSON)."""
        sub = Response()
        del sub.headers["content-length"]
        # FastAPI's "not set by the endpoint"
        sub.status_code = None  # type: ignore[assignment]
        result = await self._call(request, sub, checked)
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


class CaptureRoute(LeanRoute):
    """``POST /leads``; ``fields`` is the custom field set's loader."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        loaders = [d.call for d in self.dependant.dependencies if d.name == "fields"]
        self.fields: Callable[[Request], Coroutine[Any, Any, Any]] = loaders[0]  # type: ignore[assignment]

    async def _own(self, request: Request) -> Any:
        return await self.fields(request)

    async def _call(self, request: Request, response: Response, checked: Checked) -> Any:
        _, body, fields = checked
        groups = await get_capture_groups(request)
        return await self.endpoint(body=body, response=response, groups=groups, fields=fields)


class BehaviourRoute(LeanRoute):
    """``POST /leads/{lead_id}/behaviours``; ``lead_id`` is the route's path field."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        (self.lead_id,) = (p for p in self.dependant.path_params if p.name == "lead_id")

    async def _own(self, request: Request) -> Any:
        value, errors = self.lead_id.validate(request.path_params.get("lead_id"), {}, loc=("path", "lead_id"))
        return None if errors else value

    async def _call(self, request: Request, response: Response, checked: Checked) -> Any:
        principal, body, lead_id = checked
        groups = await get_behaviour_groups(request)
        return await self.endpoint(
            lead_id=lead_id, body=body, response=response, groups=groups, actor=actor_of(principal)
        )
