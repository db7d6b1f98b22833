"""``POST /auth/login`` (public) and ``GET /auth/me``."""

from __future__ import annotations

from typing import Annotated, Any

from crm_platform.errors import NotFound
from crm_platform.logging import request_id_var
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from gateway.api.deps import ActivePrincipal, get_accounts
from gateway.api.models import LoginRequest, MeOut, TokenOut
from gateway.handlers import Accounts, InvalidCredentials, LockedOut

login_router = APIRouter(prefix="/auth", tags=["auth"])
me_router = APIRouter(prefix="/auth", tags=["auth"])

ERROR_SCHEMA: dict[str, Any] = {
    "content": {"application/json": {"example": {"error": "...", "message": "...", "request_id": "..."}}}
}


def _error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = {"error": code, "message": message, "request_id": request_id_var.get(), **extra}
    return JSONResponse(status_code=status, content=body, headers=headers)


@login_router.post(
    "/login",
    response_model=TokenOut,
    summary="Log in with username and password; returns a bearer token",
    responses={
        401: {
            "description": "unknown user, wrong password or deactivated account (one message)",
            **ERROR_SCHEMA,
        },
        429: {
            "description": "too many failed logins: the username is locked (see Retry-After)",
            **ERROR_SCHEMA,
        },
    },
)
async def login(body: LoginRequest, accounts: Annotated[Accounts, Depends(get_accounts)]) -> Any:
    try:
        result = await accounts.login(body.username, body.password.get_secret_value())
    except LockedOut as exc:
        return _error(
            429,
            "too_many_attempts",
            str(exc),
            headers={"Retry-After": str(exc.retry_after)},
            retry_after=exc.retry_after,
        )
    except InvalidCredentials as exc:
        return _error(401, "unauthorized", str(exc), headers={"WWW-Authenticate": "Bearer"})
    return TokenOut(access_token=result.access_token, expires_in=result.expires_in, roles=result.roles)


@me_router.get("/me", response_model=MeOut, summary="Who the bearer token belongs to")
async def me(principal: ActivePrincipal, accounts: Annotated[Accounts, Depends(get_accounts)]) -> MeOut:
    try:
        user = await accounts.get_user(principal.user_id)
    except NotFound:
        # A token signed with the shared secret for a user the gateway does not store.
        return MeOut(
            id=principal.user_id,
            username=principal.username,
            display_name=None,
            roles=sorted(principal.roles),
            active=True,
        )
    return MeOut(
        id=user["_id"],
        username=user["username"],
        display_name=user.get("display_name"),
        roles=sorted(principal.roles),
        active=bool(user["active"]),
    )
