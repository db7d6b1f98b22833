"""Identity: the gateway issues JWTs, and every service verifies them again.

Services never trust a forwarded header: each request carries the bearer token
and each service checks its signature, issuer and expiry itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Any

import jwt
from crm_contracts import utcnow
from fastapi import Depends, HTTPException, Request, status


class Role(StrEnum):
    ADMIN = "admin"
    SALES_MANAGER = "sales_manager"
    SALES_REP = "sales_rep"
    SERVICE_REP = "service_rep"
    CUSTOMER_SUCCESS_MANAGER = "customer_success_manager"
    MARKETING = "marketing"
    ANALYST = "analyst"


SALES_ROLES = frozenset({Role.SALES_REP, Role.SALES_MANAGER, Role.ADMIN})
SERVICE_ROLES = frozenset({Role.SERVICE_REP, Role.CUSTOMER_SUCCESS_MANAGER, Role.ADMIN})


@dataclass(frozen=True)
class Principal:
    user_id: str
    username: str
    roles: frozenset[str]

    def has_any(self, roles: frozenset[str] | set[str]) -> bool:
        return bool(self.roles & set(roles))


class AuthError(Exception):
    pass


@dataclass(frozen=True)
class TokenVerifier:
    secret: str
    issuer: str
    algorithm: str = "HS256"

    def issue(self, principal: Principal, ttl: timedelta = timedelta(hours=8)) -> str:
        now = utcnow()
        claims = {
            "sub": principal.user_id,
            "name": principal.username,
            "roles": sorted(principal.roles),
            "iss": self.issuer,
            "iat": now,
            "exp": now + ttl,
        }
        return jwt.encode(claims, self.secret, algorithm=self.algorithm)

    def verify(self, token: str) -> Principal:
        try:
            claims = jwt.decode(
                token,
                self.secret,
                algorithms=[self.algorithm],
                issuer=self.issuer,
                options={"require": ["sub", "exp", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token: {exc}") from None
        roles = claims.get("roles", [])
        if not isinstance(roles, list):
            raise AuthError("invalid token: roles must be a list")
        return Principal(str(claims["sub"]), str(claims.get("name", "")), frozenset(roles))


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing bearer token: send 'Authorization: Bearer <token>' (POST /auth/login)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return token


def current_principal(request: Request) -> Principal:
    cached = getattr(request.state, "principal", None)
    if isinstance(cached, Principal):
        return cached
    verifier: TokenVerifier = request.app.state.token_verifier
    try:
        principal = verifier.verify(bearer_token(request))
    except AuthError as exc:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, str(exc), headers={"WWW-Authenticate": "Bearer"}
        ) from None
    request.state.principal = principal
    return principal


CurrentUser = Annotated[Principal, Depends(current_principal)]


def require_roles(*roles: str) -> Any:
    """A dependency that lets only these roles through (403 naming them otherwise)."""
    allowed = frozenset(roles)

    def check(principal: CurrentUser) -> Principal:
        if not principal.has_any(allowed):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"requires one of the roles {sorted(allowed)}; you have {sorted(principal.roles)}",
            )
        return principal

    return Depends(check)
