"""Dependencies shared by the gateway's routers."""

from __future__ import annotations

from typing import Annotated

import jwt
from crm_platform.auth import CurrentUser, Principal
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gateway.handlers import Accounts
from gateway.upstream import Upstreams

# Documents the bearer scheme in the OpenAPI (the "Authorize" button); verification
# itself is the platform's (``crm_platform.auth.current_principal``).
bearer_scheme = HTTPBearer(auto_error=False, description="access_token from POST /auth/login")


def get_accounts(request: Request) -> Accounts:
    accounts: Accounts = request.app.state.accounts
    return accounts


def get_upstreams(request: Request) -> Upstreams:
    upstreams: Upstreams = request.app.state.upstreams
    return upstreams


async def active_principal(
    request: Request,
    principal: CurrentUser,
    accounts: Annotated[Accounts, Depends(get_accounts)],
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)] = None,
) -> Principal:
    """The verified principal, refused if the gateway has deactivated the account or revoked
    its sessions (roles, status or password changed) since the token was issued."""
    token = request.headers.get("authorization", "").partition(" ")[2]
    issued_at: int | None
    try:
        iat = jwt.decode(token, options={"verify_signature": False}).get("iat")
        issued_at = int(iat) if isinstance(iat, int | float) else None
    except jwt.InvalidTokenError:  # pragma: no cover - already verified by the platform
        issued_at = None
    reason = await accounts.session_revoked(principal.user_id, issued_at)
    if reason is not None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, reason, headers={"WWW-Authenticate": "Bearer"})
    return principal


ActivePrincipal = Annotated[Principal, Depends(active_principal)]
