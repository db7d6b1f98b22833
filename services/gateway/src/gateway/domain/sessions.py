"""Login sessions: a refresh token, kept only as its SHA-256, single use, rotated on every use.

A session (``session_id``, the access token's ``sid``) lives as long as its first
refresh token's expiry: a refresh hands out a new token of the same session with the
same expiry. A refresh token used twice means one of its two holders stole it: the
whole session ends.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime


def token_hash(refresh_token: str) -> str:
    """What is stored of a refresh token (its ``_id``): never the token itself."""
    return hashlib.sha256(refresh_token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class RefreshToken:
    id: str  # token_hash(the token)
    user_id: str
    session_id: str
    issued_at: int  # epoch second of the access token issued with it
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None = None

    def seconds_left(self, now: datetime) -> int:
        return max(1, int((self.expires_at - now).total_seconds()))


@dataclass(frozen=True)
class RefreshUse:
    """The outcome of presenting a refresh token: the token (None: unknown or expired) and
    whether this use was its first (False with a token: a replay)."""

    token: RefreshToken | None
    first_use: bool
