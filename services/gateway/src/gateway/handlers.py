"""Use cases of the gateway: log in, refresh, log out, bootstrap the first admin, manage users.

Sessions: a login gives a short-lived access token (a JWT any service verifies) and a
refresh token (random, stored only as its SHA-256, rotated on every use; a replayed
one ends its whole session). Logout, deactivation and changes of roles or password
revoke tokens; the revocation list is kept in memory, reloaded from the database
every ``CRM_REVOCATION_REFRESH_SECONDS`` and published to the services, so checking
a token never reads the database (the gateway keeps authenticating while it is down).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from crm_contracts import utcnow
from crm_platform.auth import (
    CLOCK_SKEW_SECONDS,
    Principal,
    RevocationList,
    Role,
    TokenIssuer,
    TokenVerifier,
)
from crm_platform.errors import Conflict, NotFound, RuleViolation
from crm_platform.ids import new_id
from crm_platform.mongo import Store, Tx
from pymongo.errors import DuplicateKeyError, PyMongoError

from gateway import store
from gateway.domain.lockout import ThrottlePolicy, register_attempt, retry_after
from gateway.domain.passwords import PasswordPolicy, PolicyViolation, check_username, username_key
from gateway.domain.users import removes_last_admin
from gateway.security import Passwords

log = logging.getLogger("crm.gateway.accounts")

BOOTSTRAP_ADMIN = "admin"
INVALID_CREDENTIALS = "invalid username or password"
INVALID_REFRESH = "invalid or expired refresh token; log in again"
LOCAL_GRACE_SECONDS = 30.0  # local revocations kept over reloads that may predate them


async def _wait_until(epoch_second: int) -> None:
    """Right after a revocation, wait (under a second) so the new token's ``iat`` is valid."""
    delay = epoch_second - utcnow().timestamp()
    if delay > 0:
        await asyncio.sleep(min(delay + 0.001, 2.0))


def _hash(refresh_token: str) -> str:
    return hashlib.sha256(refresh_token.encode("utf-8")).hexdigest()


class InvalidCredentials(Exception):
    """Unknown user, wrong password or deactivated account: deliberately indistinguishable."""


class InvalidRefreshToken(Exception):
    pass


class Throttled(Exception):
    def __init__(self, retry_after: int, message: str | None = None) -> None:
        super().__init__(message or f"too many login attempts; try again in {retry_after} s")
        self.retry_after = retry_after


@dataclass(frozen=True)
class LoginResult:
    access_token: str
    expires_in: int
    refresh_token: str
    refresh_expires_in: int
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
    issuer: TokenIssuer
    verifier: TokenVerifier
    password_policy: PasswordPolicy
    throttles: dict[str, ThrottlePolicy]
    access_ttl: timedelta
    refresh_ttl: timedelta
    passwords: Passwords = field(default_factory=Passwords)
    max_concurrent_logins: int = 16
    _in_flight: int = 0
    _local: RevocationList = field(default_factory=RevocationList)
    _local_at: dict[str, float] = field(default_factory=dict)
    _reload_failing: bool = False

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

    async def login(self, username: str, password: str, client: str) -> LoginResult:
        """Check the password, unless this client or account must wait (:class:`Throttled`).

        At most ``max_concurrent_logins`` run at once in this process (argon2 is costly
        on purpose); more are refused at once with a one-second Retry-After.
        """
        if self._in_flight >= self.max_concurrent_logins:
            raise Throttled(1, "too many logins in progress; try again in 1 s")
        self._in_flight += 1
        try:
            return await self._login(username, password, client)
        finally:
            self._in_flight -= 1

    async def _login(self, username: str, password: str, client: str) -> LoginResult:
        key = username_key(username)
        keys = {"client": f"client:{client}", "pair": f"pair:{key}|{client}", "account": f"account:{key}"}
        # Counted before the password is checked: parallel guesses cannot outrun the count.
        for kind, throttle_key in keys.items():
            if (wait := await self._claim(throttle_key, self.throttles[kind])) is not None:
                log.warning(
                    "login throttled", extra={"throttle": kind, "retry_after": wait, "client": client}
                )
                raise Throttled(wait)
        user = await store.find_by_username_key(self.db, key)
        # What was typed as a username is logged only when it names an account: people
        # sometimes type their password into the username field.
        who = {"username": user["username"], "user_id": user["_id"]} if user else {"username": None}
        ok = await self.passwords.verify(user.get("password_hash") if user else None, password)
        if not ok or user is None or not user.get("active", False):
            log.warning("login failed", extra={**who, "client": client})
            raise InvalidCredentials(INVALID_CREDENTIALS)
        await store.clear_attempts(self.db, keys["pair"], keys["account"])
        await store.uncount_attempt(self.db, keys["client"])
        if self.passwords.needs_rehash(user["password_hash"]):
            await store.set_password_hash(self.db, user["_id"], await self.passwords.hash(password))
        result = await self._start_session(user, session_id=None, session_expires=None)
        log.info("login", extra={**who, "client": client})
        return result

    async def _claim(self, key: str, policy: ThrottlePolicy) -> int | None:
        """Count one attempt on ``key`` atomically; seconds to wait instead when it must wait."""
        for _ in range(50):
            now = utcnow()
            state, version = await store.load_attempts(self.db, key)
            if (wait := retry_after(state, now)) is not None:
                return wait
            if await store.save_attempts(
                self.db, key, register_attempt(state, policy, now), version, policy, now
            ):
                return None
        return 1  # a storm of attempts on one key: refuse this one rather than spin

    async def _start_session(
        self, user: dict[str, Any], *, session_id: str | None, session_expires: datetime | None
    ) -> LoginResult:
        await _wait_until(int(user.get("sessions_valid_after", 0)))
        roles = sorted(str(r) for r in user.get("roles", []))
        principal = Principal(str(user["_id"]), str(user["username"]), frozenset(roles))
        session_id = session_id or new_id()
        issued = self.issuer.issue(principal, self.access_ttl, session_id=session_id)
        now = utcnow()
        expires = session_expires or now + self.refresh_ttl
        refresh_token = secrets.token_urlsafe(32)
        await store.insert_refresh_token(
            self.db,
            {
                "_id": _hash(refresh_token),
                "user_id": principal.user_id,
                "session_id": session_id,
                "issued_at": issued.issued_at,
                "created_at": now,
                "expires_at": expires,
                "used_at": None,
            },
        )
        return LoginResult(
            issued.token,
            issued.expires_at - issued.issued_at,
            refresh_token,
            max(1, int((expires - now).total_seconds())),
            roles,
            principal.user_id,
            principal.username,
        )

    async def refresh(self, refresh_token: str) -> LoginResult:
        """A new access token and a new refresh token for a valid, unused refresh token."""
        doc, fresh = await store.use_refresh_token(self.db, _hash(refresh_token), utcnow())
        if doc is None:
            raise InvalidRefreshToken(INVALID_REFRESH)
        if not fresh:
            # Used twice: one of the two holders stole it. End the session for both.
            await store.revoke_refresh_session(self.db, doc["session_id"])
            log.warning("refresh token replayed: session ended", extra={"user_id": doc["user_id"]})
            raise InvalidRefreshToken(INVALID_REFRESH)
        user = await store.get_user(self.db, doc["user_id"])
        if (
            user is None
            or not user.get("active", False)
            or int(doc.get("issued_at", 0)) < int(user.get("sessions_valid_after", 0))
        ):
            raise InvalidRefreshToken(INVALID_REFRESH)
        return await self._start_session(
            user, session_id=doc["session_id"], session_expires=doc["expires_at"]
        )

    async def logout(self, principal: Principal) -> None:
        """Revoke this access token and end its session (its refresh tokens)."""
        expires = datetime.fromtimestamp(principal.expires_at or time.time() + 3600, tz=utcnow().tzinfo)
        if principal.token_id:
            await store.revoke_token(self.db, principal.token_id, expires)
            self._remember(tokens={principal.token_id: int(expires.timestamp())})
        if principal.session_id:
            await store.revoke_refresh_session(self.db, principal.session_id)
        log.info("logout", extra={"user_id": principal.user_id, "username": principal.username})

    # --- revocation list ---------------------------------------------------------------------

    def _remember(self, *, users: dict[str, int] | None = None, tokens: dict[str, int] | None = None) -> None:
        """Apply a revocation made here at once (the next reload from the database confirms it)."""
        now = time.monotonic()
        for user_id, not_before in (users or {}).items():
            self._local.users[user_id] = not_before
            self.verifier.revocations.users[user_id] = not_before
            self._local_at[f"u:{user_id}"] = now
        for jti, exp in (tokens or {}).items():
            self._local.tokens[jti] = exp
            self.verifier.revocations.tokens[jti] = exp
            self._local_at[f"t:{jti}"] = now

    async def reload_revocations(self) -> None:
        """Rebuild the in-memory list from the database (raises when the database is down)."""
        now = utcnow()
        window = int(self.access_ttl.total_seconds()) + CLOCK_SKEW_SECONDS
        users, tokens = await store.revocations(self.db, users_since=int(now.timestamp()) - window, now=now)
        fresh = RevocationList(users, tokens)
        cutoff = time.monotonic() - LOCAL_GRACE_SECONDS
        for key, at in list(self._local_at.items()):
            kind, _, ident = key.partition(":")
            if at < cutoff:
                del self._local_at[key]
                (self._local.users if kind == "u" else self._local.tokens).pop(ident, None)
        fresh.users.update({u: max(t, fresh.users.get(u, 0)) for u, t in self._local.users.items()})
        fresh.tokens.update(self._local.tokens)
        self.verifier.revocations.replace(fresh)

    async def keep_revocations_fresh(self, every: float) -> None:
        """Background job: reload every ``every`` seconds; with the database down, keep the last list."""
        while True:
            await asyncio.sleep(every)
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                # that arrives as the reload finishes, and the job would never stop.
                async with asyncio.timeout(max(2.0, every * 2)):
                    await self.reload_revocations()
            except (PyMongoError, TimeoutError) as exc:
                if not self._reload_failing:
                    log.warning("revocation list not reloaded (database unreachable): %s", type(exc).__name__)
                self._reload_failing = True
                continue
            if self._reload_failing:
                log.info("revocation list reloaded again")
            self._reload_failing = False

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
            "_id": new_id(),
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

        async def work(tx: Tx) -> None:
            # A transaction, so a POST /users Idempotency-Key commits with the user.
            await store.insert_user(tx.db, doc, session=tx.session)

        try:
            await self.db_store.transaction(work)
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

    async def update_user(  # noqa: C901 - TODO(issue 11): becomes User.change in the gateway's port
        self, actor: Principal, user_id: str, changes: UserChanges
    ) -> dict[str, Any]:
        """Roles, active, password, display name; revokes sessions on what grants access.

        Why long: what the change may do (policy, last admin) and how it is written still
        live here together (complexity 16); the gateway's port to the guide's shape moves
        the rules into a ``User`` entity.
        """
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

        before = await store.get_user(self.db, user_id)
        updated = await self.db_store.transaction(work)
        revoked_at = int(updated.get("sessions_valid_after", 0))
        if before is not None and revoked_at > int(before.get("sessions_valid_after", 0)):
            self._remember(users={user_id: revoked_at})
            await store.revoke_refresh_tokens_of(self.db, user_id)
        if changes.password is not None:  # a reset also lifts the throttle on the account
            await store.clear_attempts(self.db, f"account:{updated['username_key']}")
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
