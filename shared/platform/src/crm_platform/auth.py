"""Identity: the gateway signs short-lived JWTs, every service verifies them itself.

Tokens are signed with Ed25519 (``EdDSA``). Only the gateway holds the private key
(:class:`TokenIssuer`); services hold the public keys (:class:`TokenVerifier`, keys
by ``kid`` from a JWKS file, see :mod:`crm_platform.keys`) and so cannot mint.
Services never trust a forwarded header: each request carries the bearer token
and each service checks its signature, algorithm, issuer, audience, expiry and the
revocation list itself. A token names its user by ``sub`` (the gateway's user id):
that is the identity; ``name`` is the username, for display and logs.

Revocation (logout, deactivation, changed roles or password) reaches every service
through a :class:`RevocationList` that the gateway publishes at ``/internal/revocations``
and each service polls (:class:`RevocationFeed`); access tokens live minutes, so the
list only holds entries younger than the longest token lifetime.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any

import httpx
import jwt
from crm_contracts import utcnow
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import Depends, HTTPException, Request, status

from crm_platform import audit, permission_policy
from crm_platform.actor import Actor
from crm_platform.keys import SigningKey
from crm_platform.roles import Role as Role  # re-exported: the roles live beside the permissions

log = logging.getLogger("crm.auth")

ALGORITHM = "EdDSA"
REQUIRED_CLAIMS = ["sub", "exp", "iat", "iss", "aud", "jti"]
CLOCK_SKEW_SECONDS = 5


SALES_ROLES = frozenset({Role.SALES_REP, Role.SALES_MANAGER, Role.ADMIN})
SERVICE_ROLES = frozenset({Role.SERVICE_REP, Role.CUSTOMER_SUCCESS_MANAGER, Role.SERVICE_LEAD, Role.ADMIN})


@dataclass(frozen=True)
class Principal:
    """Who a verified token belongs to. ``user_id`` (the ``sub``) is the identity;
    ``username`` is for display and logs only."""

    user_id: str
    username: str
    roles: frozenset[str]
    token_id: str = ""
    issued_at: int = 0
    expires_at: int = 0
    session_id: str = ""  # the login session (``sid``): logout ends it

    def has_any(self, roles: frozenset[str] | set[str]) -> bool:
        return bool(self.roles & set(roles))


class AuthError(Exception):
    pass


@dataclass
class RevocationList:
    """Tokens refused although validly signed.

    ``users``: user id -> epoch second; that user's tokens issued before it are refused
    (deactivation, changed roles or password). ``tokens``: jti -> the token's expiry
    (logout). Entries are dropped once no token they could refuse is still valid.
    """

    users: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)

    def reason(self, principal: Principal) -> str | None:
        if principal.token_id and principal.token_id in self.tokens:
            return "token revoked (logged out)"
        not_before = self.users.get(principal.user_id)
        if not_before is not None and principal.issued_at < not_before:
            return "session revoked (account deactivated, or roles or password changed); log in again"
        return None

    def replace(self, other: RevocationList) -> None:
        """Swap in a fresher list (one assignment each: readers never see a half-built one)."""
        self.users, self.tokens = dict(other.users), dict(other.tokens)

    def to_json(self) -> dict[str, Any]:
        return {
            "users": [{"user_id": u, "not_before": t} for u, t in sorted(self.users.items())],
            "tokens": [{"jti": j, "expires_at": t} for j, t in sorted(self.tokens.items())],
        }

    @classmethod
    def from_json(cls, doc: Any) -> RevocationList:
        if not isinstance(doc, dict):
            raise ValueError("revocation list: not an object")
        users = {str(e["user_id"]): int(e["not_before"]) for e in doc.get("users", [])}
        tokens = {str(e["jti"]): int(e["expires_at"]) for e in doc.get("tokens", [])}
        return cls(users, tokens)


@dataclass(frozen=True)
class IssuedToken:
    token: str
    jti: str
    issued_at: int
    expires_at: int


@dataclass(frozen=True)
class TokenIssuer:
    """Mints access tokens; only the gateway has the private key to build one."""

    key: SigningKey
    issuer: str
    audience: str

    def issue(self, principal: Principal, ttl: timedelta, *, session_id: str | None = None) -> IssuedToken:
        now = int(utcnow().timestamp())
        exp = now + int(ttl.total_seconds())
        jti = uuid.uuid4().hex
        claims = {
            "sub": principal.user_id,
            "name": principal.username,
            "roles": sorted(principal.roles),
            "iss": self.issuer,
            "aud": self.audience,
            "iat": now,
            "nbf": now,
            "exp": exp,
            "jti": jti,
        }
        if session_id:
            claims["sid"] = session_id
        token = jwt.encode(claims, self.key.private, algorithm=ALGORITHM, headers={"kid": self.key.kid})
        return IssuedToken(token, jti, now, exp)


# Verified tokens remembered per process (each client sends its token with every request).
VERIFIED_TOKENS_KEPT = 4096


@dataclass
class TokenVerifier:
    """Checks a token against the public keys (by ``kid``) and the revocation list.

    A token whose signature and claims were verified is remembered (by the whole token, its
    signature included, so only that exact string matches) with its principal: its next
    requests skip the signature check and the claims' parsing, about a tenth of a forwarded
    request's CPU in the gateway. Expiry and the revocation list are checked on every request,
    remembered or not; the oldest entries go first once ``VERIFIED_TOKENS_KEPT`` are kept.
    """

    public_keys: Mapping[str, Ed25519PublicKey]
    issuer: str
    audience: str
    revocations: RevocationList = field(default_factory=RevocationList)
    _verified: dict[str, Principal] = field(default_factory=dict, init=False, repr=False, compare=False)
    clock: Callable[[], float] = field(default=time.time, repr=False, compare=False)  # epoch seconds

    def verify(self, token: str) -> Principal:
        principal = self._verified.get(token)
        if principal is None:
            principal = self._verify_signed(token)
            while len(self._verified) >= VERIFIED_TOKENS_KEPT:
                del self._verified[next(iter(self._verified))]
            self._verified[token] = principal
        elif principal.expires_at <= self.clock() - CLOCK_SKEW_SECONDS:  # PyJWT's own test
            del self._verified[token]
            raise AuthError("token expired")
        if (reason := self.revocations.reason(principal)) is not None:
            raise AuthError(reason)
        return principal

    def _verify_signed(self, token: str) -> Principal:
        """The signature, algorithm, key, issuer, audience and time claims (PyJWT)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token: {exc}") from None
        if header.get("alg") != ALGORITHM:
            raise AuthError(f"invalid token: only {ALGORITHM}-signed tokens are accepted")
        key = self.public_keys.get(str(header.get("kid")))
        if key is None:
            raise AuthError("invalid token: unknown signing key (kid)")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                issuer=self.issuer,
                audience=self.audience,
                leeway=CLOCK_SKEW_SECONDS,
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token: {exc}") from None
        return _principal(claims)


def _principal(claims: dict[str, Any]) -> Principal:
    roles = claims.get("roles", [])
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise AuthError("invalid token: roles must be a list of strings")
    sub, iat, exp = claims["sub"], claims["iat"], claims["exp"]
    if not isinstance(sub, str) or not sub:
        raise AuthError("invalid token: sub must be a non-empty string")
    if not isinstance(iat, int | float) or not isinstance(exp, int | float):
        raise AuthError("invalid token: iat and exp must be numbers")
    return Principal(
        sub,
        str(claims.get("name", "")),
        frozenset(roles),
        token_id=str(claims["jti"]),
        issued_at=int(iat),
        expires_at=int(exp),
        session_id=str(claims.get("sid", "")),
    )


# How much longer than its poll period the feed's connection is kept idle (the gateway's own
# keep-alive is 75 s: crm_platform.app.serve).
FEED_KEEPALIVE_MARGIN_SECONDS = 10.0


class RevocationFeed:
    """Keeps a service's revocation list in step with the gateway's (``GET /internal/revocations``).

    Polled every ``poll_seconds``; while the gateway does not answer, the last list
    stays in force (tokens still expire on their own within minutes).
    """

    def __init__(self, url: str, target: RevocationList, poll_seconds: float = 5.0) -> None:
        self.url = url
        self.target = target
        self.poll_seconds = poll_seconds
        self.failing = False

    async def refresh(self, client: httpx.AsyncClient) -> bool:
        try:
            response = await client.get(self.url)
            response.raise_for_status()
            fresh = RevocationList.from_json(response.json())
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            if not self.failing:
                log.warning("revocation list not refreshed from %s: %s", self.url, exc)
            self.failing = True
            return False
        if self.failing:
            log.info("revocation list refreshed again from %s", self.url)
        self.failing = False
        self.target.replace(fresh)
        return True

    def client(self) -> httpx.AsyncClient:
        """The feed's HTTP client: its one connection to the gateway kept from poll to poll.
        httpx drops a connection idle for 5 s by default, the poll's own period, so every poll
        opened a new one (a connect here; in the gateway an accept and a new connection's
        protocol, for each of the four services' polls; docs/performance.md, eighteenth session)."""
        expiry = self.poll_seconds + FEED_KEEPALIVE_MARGIN_SECONDS
        keep = httpx.Limits(max_connections=1, keepalive_expiry=expiry)
        return httpx.AsyncClient(timeout=max(1.0, self.poll_seconds), trust_env=False, limits=keep)

    async def run(self) -> None:
        async with self.client() as client:
            while True:
                await self.refresh(client)
                await asyncio.sleep(self.poll_seconds)


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


async def current_principal(request: Request) -> Principal:
    """The request's verified principal (401 otherwise).

    ``async`` on purpose, like every dependency here: FastAPI runs a plain ``def``
    dependency in the thread pool, a hop that cost more than the check itself.
    It also names the request's user and route for the audit log (crm_platform.audit): an
    ``async`` dependency runs in the request's own context, so the handler's transaction sees them.
    """
    principal = principal_of(request)
    audit.actor_var.set(Actor(principal.user_id, principal.username, principal.roles))
    route = request.scope.get("route")
    # The route's path template; the request's own path only without one (building
    # ``request.url`` parses the whole URL: a few % of a forwarded request's CPU).
    path = getattr(route, "path", None)
    if path is None:
        path = request.url.path
    audit.operation_var.set(f"{request.method} {path}")
    return principal


def principal_of(request: Request) -> Principal:
    """:func:`current_principal` for synchronous callers (the idempotency middleware)."""
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


class RoleCheck:
    """The dependency behind :func:`require_roles`; ``allowed`` is introspectable (route tests)."""

    def __init__(self, roles: frozenset[str]) -> None:
        self.allowed = roles

    async def __call__(self, request: Request, principal: CurrentUser) -> Principal:
        # The route's permission decides when the catalogue covers it (the policy in data:
        # an administrator's grant or revocation); ``allowed`` are the defaults otherwise.
        allowed = await permission_policy.permitted_roles(request, self.allowed)
        if not principal.has_any(allowed):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"requires one of the roles {sorted(str(r) for r in allowed)}; "
                f"you have {sorted(principal.roles)}",
            )
        return principal


def require_roles(*roles: str) -> Any:
    """A dependency that lets only these roles through (403 naming them otherwise)."""
    return Depends(RoleCheck(frozenset(roles)))
