"""In-memory implementations of the gateway's repositories and unit, for unit tests only.

Entities are copied on the way in and out (a handler that forgets ``save`` fails its
test), the unique username raises ``DuplicateKeyError`` as the Mongo index does, and
the compare-and-set of login attempts and the single use of refresh tokens behave as
their Mongo counterparts. :class:`FakeRepositories` reads the users of the unit of
work's unit, so what a committed ``work`` wrote is what a login then finds.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

from crm_platform.permissions import DEFAULT_POLICY, Policy
from crm_platform.uow import FakeUnit
from pymongo.errors import DuplicateKeyError

from gateway.domain.erasure import ErasureRequest
from gateway.domain.lockout import Attempts, ThrottlePolicy
from gateway.domain.sessions import RefreshToken, RefreshUse
from gateway.domain.users import ADMIN, User


class InMemoryUsers:
    def __init__(self) -> None:
        self.items: dict[str, User] = {}
        self.admin_guard = 0

    async def get(self, user_id: str) -> User | None:
        return copy.deepcopy(self.items.get(user_id))

    async def by_username_key(self, key: str) -> User | None:
        found = next((u for u in self.items.values() if u.username_key == key), None)
        return copy.deepcopy(found)

    async def any(self) -> bool:
        return bool(self.items)

    async def add(self, user: User) -> None:
        if user.id in self.items or await self.by_username_key(user.username_key) is not None:
            raise DuplicateKeyError(f"username {user.username!r} is taken")
        self.items[user.id] = copy.deepcopy(user)

    async def save(self, user: User) -> None:
        self.items[user.id] = copy.deepcopy(user)

    async def set_password_hash(self, user_id: str, password_hash: str) -> None:
        if (user := self.items.get(user_id)) is not None:
            user.password_hash = password_hash

    async def count_other_active_admins(self, user_id: str) -> int:
        return sum(1 for u in self.items.values() if u.id != user_id and u.active and ADMIN in u.roles)

    async def guard_admins(self) -> None:
        self.admin_guard += 1


class InMemoryLoginAttempts:
    def __init__(self) -> None:
        self.items: dict[str, tuple[Attempts, int]] = {}

    async def load(self, key: str) -> tuple[Attempts, int | None]:
        if key not in self.items:
            return Attempts(), None
        return self.items[key]

    async def save(
        self, key: str, state: Attempts, version: int | None, policy: ThrottlePolicy, now: datetime
    ) -> bool:
        current = self.items[key][1] if key in self.items else None
        if current != version:
            return False
        self.items[key] = (state, (version or 0) + 1)
        return True

    async def clear(self, *keys: str) -> None:
        for key in keys:
            self.items.pop(key, None)

    async def uncount(self, key: str) -> None:
        if key in self.items and self.items[key][0].attempts > 0:
            state, version = self.items[key]
            self.items[key] = (replace(state, attempts=state.attempts - 1), version + 1)


class InMemoryRefreshTokens:
    def __init__(self) -> None:
        self.items: dict[str, RefreshToken] = {}

    async def add(self, token: RefreshToken) -> None:
        self.items[token.id] = token

    async def use(self, token_id: str, now: datetime) -> RefreshUse:
        token = self.items.get(token_id)
        if token is None or token.expires_at <= now:
            return RefreshUse(None, first_use=False)
        if token.used_at is not None:
            return RefreshUse(token, first_use=False)
        self.items[token_id] = used = replace(token, used_at=now)
        return RefreshUse(used, first_use=True)

    async def end_session(self, session_id: str) -> None:
        self.items = {k: t for k, t in self.items.items() if t.session_id != session_id}

    async def end_sessions_of(self, user_id: str) -> None:
        self.items = {k: t for k, t in self.items.items() if t.user_id != user_id}


class InMemoryRevocations:
    def __init__(self, users: Callable[[], InMemoryUsers]) -> None:
        self._users = users  # the unit's users, whichever object they are after a rollback
        self.tokens: dict[str, datetime] = {}

    async def revoke_token(self, jti: str, expires_at: datetime) -> None:
        self.tokens.setdefault(jti, expires_at)

    async def load(self, *, users_since: int, now: datetime) -> tuple[dict[str, int], dict[str, int]]:
        users = {
            u.id: u.sessions_valid_after
            for u in self._users().items.values()
            if u.sessions_valid_after > users_since
        }
        return users, {jti: int(exp.timestamp()) for jti, exp in self.tokens.items() if exp > now}


class InMemoryPolicy:
    def __init__(self) -> None:
        self.current: Policy = DEFAULT_POLICY

    async def get(self) -> Policy:
        return self.current

    async def save(self, policy: Policy) -> None:
        self.current = policy


class InMemoryErasureRequests:
    def __init__(self) -> None:
        self.items: dict[str, ErasureRequest] = {}

    async def get(self, request_id: str) -> ErasureRequest | None:
        return self.items.get(request_id)

    async def add(self, request: ErasureRequest) -> None:
        if request.id in self.items:
            raise DuplicateKeyError(f"erasure request {request.id} exists")
        self.items[request.id] = request

    async def save(self, request: ErasureRequest) -> None:
        self.items[request.id] = request


class FakeGatewayUnit(FakeUnit):
    def __init__(self) -> None:
        super().__init__()
        self.users = InMemoryUsers()
        self.policy = InMemoryPolicy()
        self.erasures = InMemoryErasureRequests()


class FakeRepositories:
    """The repositories outside a transaction; their users are ``unit.users``."""

    def __init__(self, unit: FakeGatewayUnit) -> None:
        self.unit = unit
        self.attempts = InMemoryLoginAttempts()
        self.refresh_tokens = InMemoryRefreshTokens()
        self.revocations = InMemoryRevocations(lambda: self.unit.users)

    @property
    def users(self) -> InMemoryUsers:
        return self.unit.users
