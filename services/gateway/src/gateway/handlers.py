"""Use cases of the gateway: log in, bootstrap the first admin, manage users, check sessions."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from crm_contracts import utcnow
from crm_platform.auth import Principal, Role, TokenVerifier
from crm_platform.errors import Conflict, NotFound, RuleViolation
from crm_platform.mongo import Store, Tx
from pymongo.errors import DuplicateKeyError

from gateway import store
from gateway.domain.lockout import (
    Attempts,
    LockoutPolicy,
    register_failure,
    retry_after,
)
from gateway.domain.passwords import PasswordPolicy, PolicyViolation, check_username, username_key
from gateway.domain.users import removes_last_admin
from gateway.security import Passwords

log = logging.getLogger("crm.gateway.accounts")

BOOTSTRAP_ADMIN = "admin"
INVALID_CREDENTIALS = "invalid username or password"


async def _wait_until(epoch_second: int) -> None:
    """Right after a revocation, wait (under a second) so the new token's ``iat`` is valid."""
    delay = epoch_second - utcnow().timestamp()
    if delay > 0:
        await asyncio.sleep(min(delay + 0.001, 2.0))


class InvalidCredentials(Exception):
    """Unknown user, wrong password or deactivated account: deliberately indistinguishable."""


class LockedOut(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed logins; try again in {retry_after} s")
        self.retry_after = retry_after


@dataclass(frozen=True)
class LoginResult:
    access_token: str
    expires_in: int
    roles: list[str]
    user_id: str
    username: str


@dataclass(frozen=True)
class UserChanges:
    roles: list[Role] | None = None
    active: bool | None = None
    password: str | None = None
    display_name: str | None = None


@dataclass
class Accounts:
    db_store: Store
    verifier: TokenVerifier
    password_policy: PasswordPolicy
    lockout: LockoutPolicy
    token_ttl: timedelta
    passwords: Passwords = field(default_factory=Passwords)
    session_cache_seconds: float = 2.0
    _sessions: dict[str, tuple[float, tuple[bool, int] | None]] = field(default_factory=dict)

    @property
    def db(self) -> store.Db:
        return self.db_store.db

    # --- bootstrap ---------------------------------------------------------------------------

    async def bootstrap_admin(self, password: str) -> bool:
        """Create ``admin`` when there are no users at all; True if it was created."""
        if await store.has_users(self.db):
            return False
        try:
            await self._insert(BOOTSTRAP_ADMIN, password, [Role.ADMIN], "Administrator")
        except Conflict:
            return False  # another replica bootstrapped it at the same moment
        log.warning(
            "bootstrap: created user 'admin' (no users existed); change its password",
            extra={"username": BOOTSTRAP_ADMIN},
        )
        return True

    # --- login -------------------------------------------------------------------------------

    async def login(self, username: str, password: str) -> LoginResult:
        key = username_key(username)
        now = utcnow()
        state, _ = await store.load_attempts(self.db, key)
        user = await store.find_by_username_key(self.db, key)
        # What was typed as a username is logged only when it names an account: people
        # sometimes type their password into the username field.
        who = {"username": user["username"], "user_id": user["_id"]} if user else {"username": None}
        if (wait := retry_after(state, now)) is not None:
            log.warning("login refused: locked", extra={**who, "retry_after": wait})
            raise LockedOut(wait)
        ok = await self.passwords.verify(user.get("password_hash") if user else None, password)
        if not ok or user is None or not user.get("active", False):
            state = await self._record_failure(key)
            log.warning("login failed", extra={**who, "failures": state.failures})
            if (wait := retry_after(state, utcnow())) is not None:
                raise LockedOut(wait)
            raise InvalidCredentials(INVALID_CREDENTIALS)
        if state != Attempts():
            await store.clear_attempts(self.db, key)
        if self.passwords.needs_rehash(user["password_hash"]):
            await store.set_password_hash(self.db, user["_id"], await self.passwords.hash(password))
        await _wait_until(int(user.get("sessions_valid_after", 0)))
        roles = sorted(str(r) for r in user.get("roles", []))
        principal = Principal(str(user["_id"]), str(user["username"]), frozenset(roles))
        token = self.verifier.issue(principal, ttl=self.token_ttl)
        log.info("login", extra={"user_id": principal.user_id, "username": principal.username})
        return LoginResult(
            token, int(self.token_ttl.total_seconds()), roles, principal.user_id, principal.username
        )

    async def _record_failure(self, key: str) -> Attempts:
        state = Attempts()
        for _ in range(20):
            now = utcnow()
            current, version = await store.load_attempts(self.db, key)
            state = register_failure(current, self.lockout, now)
            if await store.save_attempts(self.db, key, state, version, self.lockout, now):
                return state
        return state

    # --- users -------------------------------------------------------------------------------

    async def create_user(
        self, username: str, password: str, roles: list[Role], display_name: str | None
    ) -> dict[str, Any]:
        return await self._insert(username, password, roles, display_name)

    async def _insert(
        self, username: str, password: str, roles: list[Role], display_name: str | None
    ) -> dict[str, Any]:
        try:
            name = check_username(username)
            self.password_policy.check(password, username=name)
        except PolicyViolation as exc:
            raise RuleViolation(exc.message, field=exc.field) from None
        if not roles:
            raise RuleViolation("a user needs at least one role", field="roles")
        now = utcnow()
        doc: dict[str, Any] = {
            "_id": uuid.uuid4().hex,
            "username": name,
            "username_key": username_key(name),
            "display_name": display_name or name,
            "roles": sorted({str(r) for r in roles}),
            "active": True,
            "password_hash": await self.passwords.hash(password),
            "created_at": now,
            "updated_at": now,
            "password_changed_at": now,
            "sessions_valid_after": int(now.timestamp()),
        }
        try:
            await store.insert_user(self.db, doc)
        except DuplicateKeyError:
            raise Conflict(f"username {name!r} is taken", username=name) from None
        log.info("user created", extra={"user_id": doc["_id"], "username": name, "roles": doc["roles"]})
        return doc

    async def list_users(
        self, *, active: bool | None, limit: int, offset: int
    ) -> tuple[list[dict[str, Any]], int]:
        return await store.list_users(self.db, active=active, limit=limit, offset=offset)

    async def get_user(self, user_id: str) -> dict[str, Any]:
        user = await store.get_user(self.db, user_id)
        if user is None:
            raise NotFound(f"no user {user_id!r}", user_id=user_id)
        return user

    async def update_user(self, actor: Principal, user_id: str, changes: UserChanges) -> dict[str, Any]:
        password_hash: str | None = None
        if changes.password is not None:
            existing = await self.get_user(user_id)
            try:
                self.password_policy.check(changes.password, username=existing["username"])
            except PolicyViolation as exc:
                raise RuleViolation(exc.message, field=exc.field) from None
            password_hash = await self.passwords.hash(changes.password)
        if changes.roles is not None and not changes.roles:
            raise RuleViolation("a user needs at least one role", field="roles")

        async def work(tx: Tx) -> dict[str, Any]:
            user = await store.get_user_tx(tx, user_id)
            if user is None:
                raise NotFound(f"no user {user_id!r}", user_id=user_id)
            now = utcnow()
            updates: dict[str, Any] = {}
            revoke = False
            new_roles = (
                sorted({str(r) for r in changes.roles}) if changes.roles is not None else user["roles"]
            )
            new_active = changes.active if changes.active is not None else user["active"]
            if new_roles != user["roles"]:
                updates["roles"] = new_roles
                revoke = True
            if new_active != user["active"]:
                updates["active"] = new_active
                revoke = True
            if password_hash is not None:
                updates["password_hash"] = password_hash
                updates["password_changed_at"] = now
                revoke = True
            if changes.display_name is not None:
                updates["display_name"] = changes.display_name
            was_admin = str(Role.ADMIN) in user["roles"]
            if was_admin and ("roles" in updates or "active" in updates):
                await store.touch_admin_guard_tx(tx)
                others = await store.count_other_active_admins_tx(tx, user_id)
                if removes_last_admin(
                    was_admin=was_admin,
                    was_active=bool(user["active"]),
                    new_roles=new_roles,
                    new_active=bool(new_active),
                    other_active_admins=others,
                ):
                    raise Conflict("this change would leave no active administrator", user_id=user_id)
            if not updates:
                return user
            updates["updated_at"] = now
            if revoke:
                # Whole seconds, like the token's ``iat``: every token issued up to now
                # has iat < this; a login in the rest of this second waits for it.
                updates["sessions_valid_after"] = int(now.timestamp()) + 1
            updated = await store.update_user_tx(tx, user_id, updates)
            assert updated is not None
            return updated

        updated = await self.db_store.transaction(work)
        if changes.password is not None:
            await store.clear_attempts(self.db, updated["username_key"])  # a reset also unlocks
        self._sessions.pop(user_id, None)
        log.info(
            "user updated",
            extra={
                "user_id": user_id,
                "by": actor.user_id,
                "roles": updated["roles"],
                "active": updated["active"],
                "password_reset": changes.password is not None,
            },
        )
        return updated

    # --- sessions ----------------------------------------------------------------------------

    async def session_revoked(self, user_id: str, issued_at: int | None) -> str | None:
        """Why a token of this user may no longer be used, or None.

        Tokens of users the gateway does not know (e.g. minted by a service's test
        helpers with the shared secret) pass: the signature is what counts there.
        """
        now = time.monotonic()
        cached = self._sessions.get(user_id)
        if cached is None or now - cached[0] > self.session_cache_seconds:
            user = await store.get_user(self.db, user_id)
            summary = (
                None if user is None else (bool(user.get("active")), int(user.get("sessions_valid_after", 0)))
            )
            if len(self._sessions) > 10_000:
                self._sessions.clear()
            self._sessions[user_id] = cached = (now, summary)
        summary = cached[1]
        if summary is None:
            return None
        active, valid_after = summary
        if not active:
            return "account deactivated"
        if issued_at is not None and issued_at < valid_after:
            return "session revoked (roles, status or password changed); log in again"
        return None
