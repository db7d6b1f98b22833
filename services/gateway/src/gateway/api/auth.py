"""``/auth``: login, refresh and logout; who am I; the revocation list and public keys."""

from __future__ import annotations

from typing import Any

from crm_platform.errors import NotFound
from crm_platform.keys import jwks
from crm_platform.logging import request_id_var
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pymongo.errors import PyMongoError

from gateway import handlers
from gateway.api.deps import ActivePrincipal, HandlerDeps
from gateway.api.models import LoginRequest, MeOut, RefreshRequest, TokenOut
from gateway.handlers import InvalidCredentials, InvalidRefreshToken, LoginResult, Throttled

login_router = APIRouter(prefix="/auth", tags=["auth"])
me_router = APIRouter(prefix="/auth", tags=["auth"])
keys_router = APIRouter(tags=["auth"])
# In-cluster only: the production ingress routes /api, /auth, /users and /docs, not /internal.
internal_router = APIRouter(prefix="/internal", tags=["internal"])
DB_RETRY_AFTER = 5

ERROR_SCHEMA: dict[str, Any] = {
    "content": {"application/json": {"example": {"error": "...", "message": "...", "request_id": "..."}}}
}
UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"description": "the gateway's database is unreachable (see Retry-After)", **ERROR_SCHEMA}
}


def _error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = {"error": code, "message": message, "request_id": request_id_var.get(), **extra}
    return JSONResponse(status_code=status, content=body, headers=headers)


def _unavailable() -> JSONResponse:
    return _error(
        503,
        "service_unavailable",
        "the gateway's database is unreachable; logins and refreshes resume when it is back "
        "(tokens already issued keep working)",
        headers={"Retry-After": str(DB_RETRY_AFTER)},
        retry_after=DB_RETRY_AFTER,
    )


def client_address(request: Request) -> str:
    """The caller's address: the socket peer, or the X-Forwarded-For entry added by the
    outermost of ``CRM_TRUSTED_PROXY_HOPS`` trusted proxies (clients can forge the rest)."""
    hops: int = request.app.state.settings.trusted_proxy_hops
    peer = request.client.host if request.client else "unknown"
    if hops <= 0:
        return peer
    chain = [a.strip() for a in request.headers.get("x-forwarded-for", "").split(",") if a.strip()]
    return chain[-hops] if len(chain) >= hops else (chain[0] if chain else peer)


def _token(result: LoginResult) -> TokenOut:
    return TokenOut(
        access_token=result.access_token,
        expires_in=result.expires_in,
        refresh_token=result.refresh_token,
        refresh_expires_in=result.refresh_expires_in,
        roles=result.roles,
    )


@login_router.post(
    "/login",
    response_model=TokenOut,
    summary="Log in with username and password; returns an access and a refresh token",
    responses={
        401: {
            "description": "unknown user, wrong password or deactivated account (one message)",
            **ERROR_SCHEMA,
        },
        429: {
            "description": "too many attempts from this client or on this account, or too many "
            "logins at once: wait Retry-After seconds",
            **ERROR_SCHEMA,
        },
        **UNAVAILABLE,
    },
)
async def login(body: LoginRequest, request: Request, deps: HandlerDeps) -> Any:
    try:
        result = await handlers.login(
            deps, body.username, body.password.get_secret_value(), client_address(request)
        )
    except Throttled as exc:
        return _error(
            429,
            "too_many_attempts",
            str(exc),
            headers={"Retry-After": str(exc.retry_after)},
            retry_after=exc.retry_after,
        )
    except InvalidCredentials as exc:
        return _error(401, "unauthorized", str(exc), headers={"WWW-Authenticate": "Bearer"})
    except PyMongoError:
        return _unavailable()
    return _token(result)


@login_router.post(
    "/refresh",
    response_model=TokenOut,
    summary="Trade a refresh token for a new access token and a new refresh token",
    responses={
        401: {"description": "unknown, expired, already used or revoked refresh token", **ERROR_SCHEMA},
        **UNAVAILABLE,
    },
)
async def refresh(body: RefreshRequest, deps: HandlerDeps) -> Any:
    try:
        result = await handlers.refresh(deps, body.refresh_token.get_secret_value())
    except InvalidRefreshToken as exc:
        return _error(401, "unauthorized", str(exc), headers={"WWW-Authenticate": "Bearer"})
    except PyMongoError:
        return _unavailable()
    return _token(result)


@me_router.post(
    "/logout",
    status_code=204,
    response_class=Response,
    summary="Revoke this access token everywhere and end its session (its refresh token)",
    responses={401: {"description": "no valid token"}, **UNAVAILABLE},
)
async def logout(principal: ActivePrincipal, deps: HandlerDeps) -> Response:
    try:
        await handlers.logout(deps, principal)
    except PyMongoError:
        return _unavailable()
    return Response(status_code=204)


@me_router.get("/me", response_model=MeOut, summary="Who the bearer token belongs to")
async def me(principal: ActivePrincipal, deps: HandlerDeps) -> MeOut:
    try:
        user = await handlers.get_user(deps, principal.user_id)
    except (NotFound, PyMongoError):
        # Not stored here (a token minted with this install's development key by a test
        # helper) or the database is down: what the signed token says.
        return MeOut(
            id=principal.user_id,
            username=principal.username,
            display_name=None,
            roles=sorted(principal.roles),
            active=True,
        )
    return MeOut(
        id=user.id,
        username=user.username,
        display_name=user.display_name,
        roles=sorted(principal.roles),
        active=user.active,
    )


@internal_router.get(
    "/revocations",
    summary="Revoked sessions and tokens still within their lifetime (polled by every service)",
)
async def revocations(deps: HandlerDeps) -> dict[str, Any]:
    # Served from memory: services keep getting the list while the database is down.
    return deps.revocations.verifier.revocations.to_json()


@keys_router.get("/.well-known/jwks.json", summary="The public keys that verify the gateway's tokens")
async def public_keys(deps: HandlerDeps) -> dict[str, Any]:
    return jwks(deps.revocations.verifier.public_keys)
