"""The session cookie, the CSRF token and the draft kept across a login.

Everything the console remembers about a signed-in user travels in one cookie,
sealed (encrypted and authenticated) with the console's key, so the console
needs no database and a user cannot read or change what is in it:

- ``crm_session``: the gateway's access and refresh tokens, HttpOnly,
  SameSite=Lax, Secure outside local, refused once older than the session limit;
- ``crm_csrf``: a random value; every form carries ``HMAC(key, value)``, so a
  page of another site can neither read nor forge it (signed double submit);
- ``crm_draft``: what a user typed into a form whose session had expired, kept
  for 15 minutes so the page shows it again after the login.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.fernet import Fernet, InvalidToken

SESSION_COOKIE = "crm_session"
CSRF_COOKIE = "crm_csrf"
DRAFT_COOKIE = "crm_draft"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
DRAFT_SECONDS = 15 * 60


class Sealer:
    """Authenticated encryption of small JSON documents (Fernet: AES-CBC + HMAC-SHA256)."""

    def __init__(self, key: bytes) -> None:
        digest = hashlib.sha256(b"crm-console-cookie\0" + key).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(digest))
        self._mac_key = hashlib.sha256(b"crm-console-csrf\0" + key).digest()

    def seal(self, doc: dict[str, Any]) -> str:
        return self._fernet.encrypt(json.dumps(doc, separators=(",", ":")).encode()).decode()

    def open(self, token: str | None, max_age_seconds: float) -> dict[str, Any] | None:
        """The document, or None when missing, forged, corrupt or older than ``max_age_seconds``."""
        if not token:
            return None
        try:
            raw = self._fernet.decrypt(token.encode(), ttl=int(max_age_seconds))
            doc = json.loads(raw)
        except (InvalidToken, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def csrf_token(self, cookie_value: str) -> str:
        return hmac.new(self._mac_key, cookie_value.encode(), hashlib.sha256).hexdigest()

    def csrf_valid(self, cookie_value: str | None, submitted: str | None) -> bool:
        if not cookie_value or not submitted:
            return False
        return hmac.compare_digest(self.csrf_token(cookie_value), submitted)


def new_csrf_value() -> str:
    return secrets.token_urlsafe(32)


@dataclass
class Session:
    """A signed-in user as the console knows them: the gateway's tokens and what they say."""

    access_token: str
    refresh_token: str
    username: str
    user_id: str
    roles: frozenset[str]
    expires_at: float  # the access token's exp (epoch seconds)
    display_name: str | None = None
    changed: bool = field(default=False, compare=False)  # tokens refreshed: write the cookie again

    @classmethod
    def from_tokens(cls, access_token: str, refresh_token: str, display_name: str | None = None) -> Session:
        # The token comes straight from the gateway over the console's own connection and is
        # kept sealed; it is read here only for display and timing. The gateway and every
        # service verify it on each API call, which is where authorization happens.
        claims = jwt.decode(access_token, options={"verify_signature": False})
        return cls(
            access_token=access_token,
            refresh_token=refresh_token,
            username=str(claims.get("name") or claims.get("sub")),
            user_id=str(claims.get("sub")),
            roles=frozenset(str(r) for r in claims.get("roles", [])),
            expires_at=float(claims.get("exp", 0)),
            display_name=display_name,
        )

    def to_doc(self) -> dict[str, Any]:
        return {"a": self.access_token, "r": self.refresh_token, "d": self.display_name}

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Session | None:
        try:
            return cls.from_tokens(str(doc["a"]), str(doc["r"]), doc.get("d"))
        except (KeyError, jwt.PyJWTError):
            return None

    def needs_refresh(self, margin_seconds: float, now: float | None = None) -> bool:
        return (now if now is not None else time.time()) >= self.expires_at - margin_seconds

    def has_any(self, roles: frozenset[str]) -> bool:
        return bool(self.roles & roles)


def safe_next(target: str | None, default: str = "/") -> str:
    """Only a path on this site: never ``//host``, a scheme or a backslash trick."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    if any(ord(c) < 0x20 for c in target):
        return default
    return target
