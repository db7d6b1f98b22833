"""Dependencies shared by the gateway's routers."""

from __future__ import annotations

from typing import Annotated

from crm_platform.auth import CurrentUser, Principal
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gateway.handlers import Deps
from gateway.upstream import Upstreams

# Documents the bearer scheme in the OpenAPI (the "Authorize" button); verification
# itself is the platform's (``crm_platform.auth.current_principal``).
bearer_scheme = HTTPBearer(auto_error=False, description="access_token from POST /auth/login")


async def get_deps(request: Request) -> Deps:
    deps: Deps = request.app.state.deps
    return deps


async def get_upstreams(request: Request) -> Upstreams:
    upstreams: Upstreams = request.app.state.upstreams
    return upstreams


async def active_principal(
    principal: CurrentUser,
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)] = None,
) -> Principal:
    """The verified principal: signature, claims and the in-memory revocation list
    (logout, deactivation, changed roles or password) were checked without a database read."""
    return principal


ActivePrincipal = Annotated[Principal, Depends(active_principal)]
HandlerDeps = Annotated[Deps, Depends(get_deps)]
