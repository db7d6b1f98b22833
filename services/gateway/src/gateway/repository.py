"""What the gateway's handlers need from storage: one small interface per thing it keeps.

``store.py`` implements these over MongoDB, ``fakes.py`` in memory for unit tests.

Two ways in: a change of a user (create, update) runs in the unit of work's
transaction (:class:`GatewayUnit`, through ``crm_platform.uow``: the request's
Idempotency-Key commits with it, and two administrators demoted at once conflict);
login, refresh and logout are single-document atomic writes outside any transaction
(:class:`Repositories`): a counted login attempt must stay counted when the password
then turns out wrong. A change of the role -> permission policy runs in the unit of work
too, and emits ``permissions.changed`` (the outbox) in its transaction; so does filing an
erasure request (``erasure.requested``) and folding a department's confirmation of one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from crm_contracts import Event
from crm_platform.permissions import Policy

from gateway.domain.erasure import ErasureRequest
from gateway.domain.lockout import Attempts, ThrottlePolicy
from gateway.domain.sessions import RefreshToken, RefreshUse
from gateway.domain.users import User


class UserRepository(Protocol):
    async def get(self, user_id: str) -> User | None: ...

    async def by_username_key(self, key: str) -> User | None: ...

    async def any(self) -> bool:
        """Is there any user at all?"""

    async def add(self, user: User) -> None:
        """Raises ``DuplicateKeyError`` when the username is taken (any case)."""

    async def save(self, user: User) -> None: ...

    async def set_password_hash(self, user_id: str, password_hash: str) -> None:
        """Only the hash (a transparent rehash after login): no other field is written."""

    async def count_other_active_admins(self, user_id: str) -> int:
        """Active administrators besides ``user_id``; in a transaction, call
        :meth:`guard_admins` first so a concurrent change of an administrator conflicts."""

    async def guard_admins(self) -> None:
        """Write the one guard document every change of an administrator writes (no write skew)."""


class LoginAttemptRepository(Protocol):
    async def load(self, key: str) -> tuple[Attempts, int | None]:
        """The key's attempts and their version (None: no record)."""

    async def save(
        self, key: str, state: Attempts, version: int | None, policy: ThrottlePolicy, now: datetime
    ) -> bool:
        """Compare-and-set on ``version``; False when another login changed the record first."""

    async def clear(self, *keys: str) -> None: ...

    async def uncount(self, key: str) -> None:
        """Undo one counted attempt (a login that succeeded) without touching its delay."""


class RefreshTokenRepository(Protocol):
    async def add(self, token: RefreshToken) -> None: ...

    async def use(self, token_id: str, now: datetime) -> RefreshUse:
        """Mark an unexpired token used, atomically (see :class:`RefreshUse`)."""

    async def end_session(self, session_id: str) -> None: ...

    async def end_sessions_of(self, user_id: str) -> None: ...


class RevocationRepository(Protocol):
    async def revoke_token(self, jti: str, expires_at: datetime) -> None: ...

    async def load(self, *, users_since: int, now: datetime) -> tuple[dict[str, int], dict[str, int]]:
        """Users whose sessions were revoked after ``users_since`` (epoch s) -> that second,
        and revoked token ids still unexpired -> their expiry (epoch s)."""


class PolicyRepository(Protocol):
    """The role -> permission policy (one document; the defaults until a first change)."""

    async def get(self) -> Policy: ...

    async def save(self, policy: Policy) -> None: ...


class ErasureRequestRepository(Protocol):
    """Erasure requests (issue 9), each with the departments' confirmations."""

    async def get(self, request_id: str) -> ErasureRequest | None: ...

    async def add(self, request: ErasureRequest) -> None: ...

    async def save(self, request: ErasureRequest) -> None: ...


class GatewayUnit(Protocol):
    """What a user-, policy- or erasure-changing handler works in: one transaction."""

    @property
    def users(self) -> UserRepository: ...

    @property
    def policy(self) -> PolicyRepository: ...

    @property
    def erasures(self) -> ErasureRequestRepository: ...

    def emit(self, event: Event, *, correlation_id: str | None = None) -> None: ...


class Repositories(Protocol):
    """Single-document reads and writes outside a transaction (logins, sessions, revocations)."""

    @property
    def users(self) -> UserRepository: ...

    @property
    def attempts(self) -> LoginAttemptRepository: ...

    @property
    def refresh_tokens(self) -> RefreshTokenRepository: ...

    @property
    def revocations(self) -> RevocationRepository: ...
