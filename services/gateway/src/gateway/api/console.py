"""``/``: the web console, served through the gateway at the site's root.

Every path the gateway does not route itself (``/``, ``/login``, ``/leads``,
``/static/...``) is forwarded to the console service unchanged, cookies
included. The console authenticates its users by its own session cookie and
calls the API below ``/api/...`` with their tokens, so nothing here grants
access: the route table (deny by default) still guards every API call. Paths
under the gateway's own prefixes never reach the console: an unknown
``/api/...``, ``/auth/...``, ``/users/...`` or ``/internal/...`` path stays a
JSON 404 for API clients.
"""

from __future__ import annotations

from typing import Annotated

from crm_platform.errors import NotFound
from fastapi import APIRouter, Depends, Request, Response

from gateway.api.deps import get_upstreams
from gateway.api.proxy import _stream
from gateway.domain.routes import CONSOLE
from gateway.upstream import Upstreams

GATEWAY_PREFIXES = ("/api/", "/public/", "/auth/", "/users/", "/internal/", "/docs/", "/.well-known/")
GATEWAY_PATHS = frozenset({"/api", "/public", "/auth", "/users", "/internal", "/docs", "/openapi.json"})

router = APIRouter(tags=["console"])


def is_console_path(path: str) -> bool:
    return path not in GATEWAY_PATHS and not path.startswith(GATEWAY_PREFIXES)


async def console(
    request: Request, upstreams: Annotated[Upstreams, Depends(get_upstreams)], path: str = ""
) -> Response:
    if not is_console_path(request.url.path):
        raise NotFound(f"no route {request.url.path}", path=request.url.path)
    raw = request.scope.get("raw_path")
    raw_path = bytes(raw).split(b"?", 1)[0].decode("latin-1") if isinstance(raw, bytes | bytearray) else "/"
    forwarded = await upstreams.forward(
        CONSOLE,
        method=request.method,
        raw_path=raw_path or "/",
        query=request.scope.get("query_string", b""),
        headers=request.headers,
        body=await request.body(),
        client_host=request.client.host if request.client else None,
        scheme=request.url.scheme,
        host=request.headers.get("host"),
    )
    return _stream(forwarded)


# Registered after every other route (see bootstrap), so it only gets what nothing else matched.
router.add_api_route("/", console, methods=["GET", "HEAD"], include_in_schema=False)
router.add_api_route("/{path:path}", console, methods=["GET", "HEAD", "POST"], include_in_schema=False)
