"""``/api/{service}/{path}``: verify the token, check the route table, forward unchanged."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any
from urllib.parse import quote

from crm_platform.auth import Principal, current_principal
from crm_platform.errors import NotFound
from crm_platform.permission_policy import enforce_permission
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response, status
from fastapi.routing import APIRoute
from starlette.background import BackgroundTask
from starlette.responses import StreamingResponse
from starlette.routing import BaseRoute, Match, get_route_path
from starlette.types import Receive, Scope, Send

from gateway.api.deps import active_principal, get_upstreams
from gateway.domain.routes import (
    SERVICES,
    UnsafePath,
    authorize,
    find_public_route,
    is_upload,
    normalize_path,
)
from gateway.logctx import annotate
from gateway.upstream import Forwarded, Upstreams


class ForwardingRoute(APIRoute):
    """A forwarding route whose handler makes the checks its dependencies declare, in the same
    order, without FastAPI's per-request dependency solving (a fifth of the gateway's CPU per
    forwarded request went to it): the token (``current_principal``, 401), the permission
    policy (``_permitted``, 403), then :func:`_forward` (route table, upstream). The route
    keeps its declared dependencies for the OpenAPI document; ``FORWARD_DEPENDENCIES`` names
    them and a test fails when one is added that this handler does not make.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        async def handle(request: Request) -> Response:
            principal = await current_principal(request)
            await enforce_permission(request, principal.roles)
            upstreams: Upstreams = request.app.state.upstreams
            return await _forward(request.path_params["service"], request, principal, upstreams)

        return handle


# What the forwarding routes declare (their own parameters and the protected routers' checks),
# by name: exactly what ForwardingRoute's handler does.
FORWARD_DEPENDENCIES = frozenset(
    {"current_principal", "_permitted", "active_principal", "HTTPBearer", "get_upstreams"}
)

router = APIRouter(tags=["forwarding"], route_class=ForwardingRoute)
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
DESCRIPTION = (
    "Forwards to the department service (leads, sales, service-desk, analytics) with the same "
    "method, query string, body and Authorization header. The gateway checks the token (401) "
    "and the coarse route table (403) first; the service checks again. Upstream down: 503; "
    "upstream too slow: 504."
)


def upstream_path(request: Request) -> str:
    """The path below ``/api/{service}`` exactly as the client encoded it."""
    return _raw_parts(request)[1]


def _raw_parts(request: Request) -> tuple[str, str]:
    """(service segment, rest) of the raw path, as the client encoded them."""
    raw = request.scope.get("raw_path")
    if isinstance(raw, bytes | bytearray):
        full = bytes(raw).split(b"?", 1)[0].decode("latin-1")
    else:
        full = quote(request.scope["path"], safe="/:@!$&'()*+,;=-._~")
    parts = full.split("/", 3)  # ['', 'api', '<service>', '<rest>']
    service = parts[2] if len(parts) > 2 else ""
    return service, "/" + parts[3] if len(parts) > 3 else "/"


async def _forward(service: str, request: Request, principal: Principal, upstreams: Upstreams) -> Response:
    if service not in SERVICES:
        raise NotFound(f"unknown service {service!r}; one of {list(SERVICES)}", service=service)
    raw_service, path = _raw_parts(request)
    annotate(upstream=service, upstream_path=path)
    try:
        if raw_service != service:  # an encoded '/' or other spelling of the service name
            raise UnsafePath("the service name must be spelled plainly in the path")
        policy = await request.app.state.runtime.permissions.current()
        decision = authorize(principal.roles, service, request.method, path, policy=policy)
    except UnsafePath as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    if decision.rule is None:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"{request.method} {normalize_path(path)} on {service} is not in the gateway's route "
            "table: refused by default",
        )
    if not decision.allowed:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"{request.method} {decision.rule.pattern} on {service} requires the permission "
            f"{decision.rule.permission!r}, held by the roles {sorted(decision.roles or ())}; "
            f"you have {sorted(principal.roles)}",
        )
    # An upload streams through (held one piece at a time); other bodies are small and read whole.
    body = request.stream() if is_upload(request.scope["path"]) else await request.body()
    forwarded = await upstreams.forward(
        service,
        method=request.method,
        raw_path=path,
        query=request.scope.get("query_string", b""),
        headers=request.headers,
        body=body,
        client_host=request.client.host if request.client else None,
        scheme=request.scope.get("scheme", "http"),  # request.url would parse the whole URL
        host=request.headers.get("host"),
    )
    return _stream(forwarded)


def _stream(forwarded: Forwarded) -> Response:
    raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in forwarded.headers]
    if forwarded.content is not None:  # small: read whole upstream, answered in one piece
        response = Response(forwarded.content, status_code=forwarded.status_code)
        response.raw_headers = raw_headers
        return response

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in forwarded.body:
                yield chunk
        finally:
            await forwarded.aclose()

    streamed = StreamingResponse(
        body(), status_code=forwarded.status_code, background=BackgroundTask(forwarded.aclose)
    )
    streamed.raw_headers = raw_headers
    return streamed


async def forward(
    service: str,
    path: str,
    request: Request,
    principal: Annotated[Principal, Depends(active_principal)],
    upstreams: Annotated[Upstreams, Depends(get_upstreams)],
) -> Response:
    return await _forward(service, request, principal, upstreams)


async def forward_root(
    service: str,
    request: Request,
    principal: Annotated[Principal, Depends(active_principal)],
    upstreams: Annotated[Upstreams, Depends(get_upstreams)],
) -> Response:
    return await _forward(service, request, principal, upstreams)


RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "no valid token"},
    400: {"description": "unsafe path: '.'/'..' segments, a literal '#' or '?', control characters"},
    403: {
        "description": "the route table refuses your roles, or has no rule for the route (deny by default)"
    },
    404: {"description": "unknown service"},
    503: {"description": "upstream unavailable"},
    504: {"description": "upstream timeout"},
}
# One route per method so each has its own operation id in the gateway's OpenAPI.
for _method in METHODS:
    router.add_api_route(
        "/api/{service}/{path:path}",
        forward,
        methods=[_method],
        operation_id=f"forward_{_method.lower()}",
        summary=f"{_method} on a department service",
        description=DESCRIPTION,
        responses=RESPONSES,
        include_in_schema=_method != "HEAD",
    )
router.add_api_route("/api/{service}", forward_root, methods=METHODS, include_in_schema=False)


# --- public routes: no token, only what PUBLIC_ROUTES lists ----------------------------------------

public_router = APIRouter(tags=["forwarding"])
CREDENTIALS = frozenset({"authorization", "cookie"})


async def forward_public(
    service: str,
    path: str,
    request: Request,
    upstreams: Annotated[Upstreams, Depends(get_upstreams)],
) -> Response:
    """``/public/{service}/{path}`` -> the service's ``/public/{path}``, if the public table lists it."""
    if service not in SERVICES:
        raise NotFound(f"unknown service {service!r}; one of {list(SERVICES)}", service=service)
    raw_service, rest = _raw_parts(request)
    upstream = "/public" + rest
    try:
        if raw_service != service:
            raise UnsafePath("the service name must be spelled plainly in the path")
        rule = find_public_route(service, request.method, upstream)
    except UnsafePath as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    if rule is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"{request.method} {normalize_path(upstream)} on {service} is not public",
        )
    annotate(upstream=service, upstream_path=upstream)
    forwarded = await upstreams.forward(
        service,
        method=request.method,
        raw_path=upstream,
        query=request.scope.get("query_string", b""),
        headers={k: v for k, v in request.headers.items() if k.lower() not in CREDENTIALS},
        body=await request.body(),
        client_host=request.client.host if request.client else None,
        scheme=request.scope.get("scheme", "http"),  # request.url would parse the whole URL
        host=request.headers.get("host"),
    )
    return _stream(forwarded)


for _method in ("GET", "POST"):
    public_router.add_api_route(
        "/public/{service}/{path:path}",
        forward_public,
        methods=[_method],
        operation_id=f"forward_public_{_method.lower()}",
        summary=f"{_method} on a department's public route (no token; e.g. a survey link)",
        description="Forwards without credentials to the department's `/public/...` route, only for "
        "the routes in the gateway's public table (404 otherwise).",
        responses={k: v for k, v in RESPONSES.items() if k not in (401, 403)},
    )


# --- the forwarding routes tried first -------------------------------------------------------------


class ForwardingFirst(BaseRoute):
    """Put first in the app's routes: an ``/api/...`` request goes to the forwarding routes
    without FastAPI trying every route mounted before them (the routers of the auth, users,
    permissions, erasure and audit endpoints: about a seventh of the gateway's CPU per forwarded
    request went to that search). The routes before the forwarding ones that could take an
    ``/api/...`` path (``earlier``: the docs' ``/api/{service}/openapi.json``) are still asked
    first; when one of them matches, this route does not, and the app's own search decides as
    before. The forwarding routes' own match and handling are unchanged."""

    def __init__(self, forwarding: BaseRoute, earlier: list[BaseRoute]) -> None:
        self.forwarding = forwarding
        self.earlier = earlier
        self.earlier_paths = _path_patterns(earlier)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            return Match.NONE, {}
        if self._earlier_may_match(scope) and any(
            route.matches(scope)[0] != Match.NONE for route in self.earlier
        ):
            return Match.NONE, {}
        return self.forwarding.matches(scope)

    def _earlier_may_match(self, scope: Scope) -> bool:
        """Whether a route in ``earlier`` could match: when each is a FastAPI route, only if
        its path pattern matches the path as routes see it (a route whose pattern does not is
        ``Match.NONE``; asking the docs router's three routes was about 6 us per request)."""
        if self.earlier_paths is None:
            return bool(self.earlier)
        path = get_route_path(scope)
        return any(pattern.match(path) for pattern in self.earlier_paths)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.forwarding.handle(scope, receive, send)


def try_forwarding_first(app: FastAPI) -> ForwardingFirst:
    """Install :class:`ForwardingFirst` ahead of the app's routes (once they are all mounted)."""
    routes = app.router.routes
    at = next(i for i, r in enumerate(routes) if getattr(r, "original_router", None) is router)
    first = ForwardingFirst(routes[at], [r for r in routes[:at] if _may_take_api(r)])
    routes.insert(0, first)
    return first


def _path_patterns(routes: list[BaseRoute]) -> list[re.Pattern[str]] | None:
    """The path patterns of every FastAPI route in ``routes`` (those of an included router
    included); None when any route is something else (a mount, a plain Starlette route): its
    match is then always asked."""
    patterns: list[re.Pattern[str]] = []
    for route in routes:
        contexts = route.effective_route_contexts() if hasattr(route, "effective_route_contexts") else [route]
        for context in contexts:
            original = getattr(context, "original_route", context)
            pattern = getattr(context, "path_regex", None)
            if not isinstance(original, APIRoute) or not isinstance(pattern, re.Pattern):
                return None
            patterns.append(pattern)
    return patterns


def _may_take_api(route: BaseRoute) -> bool:
    """Whether ``route`` (or a route of an included router) could match a path under ``/api/``:
    its path's literal start is a prefix of ``/api/`` or starts with it (any route without a
    path could)."""
    contexts = route.effective_route_contexts() if hasattr(route, "effective_route_contexts") else [route]
    for context in contexts:
        path = getattr(context, "path", None)
        if not isinstance(path, str):
            return True
        literal = path.split("{", 1)[0]
        if literal.startswith("/api/") or "/api/".startswith(literal):
            return True
    return False
