"""Use cases of the gateway: log in, refresh, log out, bootstrap the first admin, manage users,
change the permission policy, file erasure requests and fold their confirmations.

Sessions: a login gives a short-lived access token (a JWT any service verifies) and a
refresh token (random, stored only as its SHA-256, rotated on every use; a replayed
one ends its whole session). Logout, deactivation and changes of roles or password
revoke tokens (``gateway.revocations``: the in-memory list every token check reads).

Each handler takes :class:`Deps` first (wired once by ``bootstrap.build_app``). A
change of a user runs in the unit of work (``deps.uow.run(work)``: load, one
``User`` method, save); logins and sessions are single-document writes through
``deps.repos`` (a counted attempt stays counted when the password is wrong).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from crm_contracts import Envelope, utcnow
from crm_contracts.events.governance import ErasureCompletedV1, ErasureErasedV1
from crm_platform.actor import Actor
from crm_platform.auth import Principal, Role, TokenIssuer
from crm_platform.clock import now_millis
from crm_platform.consumer import DeadLetter
from crm_platform.errors import Conflict, NotFound
from crm_platform.permission_policy import event_of_policy
from crm_platform.permissions import Policy
from crm_platform.pseudonym import email_hash
from crm_platform.uow import UnitOfWork
from pymongo.errors import DuplicateKeyError

from gateway.domain.erasure import ErasureRequest
from gateway.domain.lockout import ThrottlePolicy, register_attempt, retry_after
from gateway.domain.passwords import PasswordPolicy, username_key
from gateway.domain.sessions import RefreshToken, token_hash
from gateway.domain.users import User, UserChange, check_password, checked_username, role_names
from gateway.repository import GatewayUnit, Repositories, UserRepository
from gateway.revocations import RevocationCache
from gateway.security import Passwords

log = logging.getLogger("crm.gateway.accounts")

BOOTSTRAP_ADMIN = "admin"
INVALID_CREDENTIALS = "invalid username or password"
INVALID_REFRESH = "invalid or expired refresh token; log in again"


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


@dataclass(frozen=True)
class Tokens:
    issuer: TokenIssuer
    access_ttl: timedelta
    refresh_ttl: timedelta


@dataclass
class Deps:
    """What the gateway's handlers work with, wired once by ``bootstrap.build_app``."""

    uow: UnitOfWork[GatewayUnit]
    repos: Repositories
    tokens: Tokens
    revocations: RevocationCache
    password_policy: PasswordPolicy
    throttles: dict[str, ThrottlePolicy]
    passwords: Passwords
    max_concurrent_logins: int = 16
    logins_in_flight: int = 0
    # Called once a policy change committed: this process's copy is dropped at once.
    on_policy_change: Callable[[], None] = lambda: None


# --- bootstrap and users -----------------------------------------------------------------------


async def bootstrap_admin(deps: Deps, password: str) -> bool:
    """Create ``admin`` when there are no users at all; True if it was created."""
    if await deps.repos.users.any():
        return False
    try:
        await create_user(deps, BOOTSTRAP_ADMIN, password, [Role.ADMIN], "Administrator")
    except Conflict:
        return False  # another replica bootstrapped it at the same moment
    log.warning(
        "bootstrap: created user 'admin' (no users existed); change its password",
        extra={"username": BOOTSTRAP_ADMIN},
    )
    return True


async def create_user(
    deps: Deps, username: str, password: str, roles: list[Role], display_name: str | None
) -> User:
    name = checked_username(username)
    check_password(deps.password_policy, password, username=name)
    names = role_names(roles)  # before the (slow) hash, like the password policy
    password_hash = await deps.passwords.hash(password)
    uow = deps.uow

    async def work(unit: GatewayUnit) -> User:
        user = User.register(
            user_id=uow.new_id(),
            username=name,
            roles=names,
            display_name=display_name,
            password_hash=password_hash,
            now=now_millis(uow.clock),
        )
        await unit.users.add(user)
        return user

    try:
        # A transaction, so a POST /users Idempotency-Key commits with the user.
        user = await uow.run(work)
    except DuplicateKeyError:
        raise Conflict(f"username {name!r} is taken", username=name) from None
    log.info("user created", extra={"user_id": user.id, "username": name, "roles": user.roles})
    return user


async def get_user(deps: Deps, user_id: str) -> User:
    return await _load_user(deps.repos.users, user_id)


async def update_user(deps: Deps, user_id: str, changes: UserChanges, actor: Actor) -> User:
    """Roles, active, password, display name; revokes the user's sessions on what grants access."""
    change = UserChange(
        roles=None if changes.roles is None else [str(r) for r in changes.roles],
        active=changes.active,
        password_hash=await _new_password_hash(deps, user_id, changes.password),
        display_name=changes.display_name,
    )
    uow = deps.uow

    async def work(unit: GatewayUnit) -> tuple[User, bool]:
        user = await _load_user(unit.users, user_id)
        others = await _other_active_admins(unit.users, user, change)
        applied = user.apply(change, now_millis(uow.clock), other_active_admins=others)
        if applied.changed:
            await unit.users.save(user)
        return user, applied.revoked

    user, revoked = await uow.run(work)
    if revoked:
        deps.revocations.remember(users={user.id: user.sessions_valid_after})
        await deps.repos.refresh_tokens.end_sessions_of(user.id)
    if changes.password is not None:  # a reset also lifts the throttle on the account
        await deps.repos.attempts.clear(f"account:{user.username_key}")
    log.info(
        "user updated",
        extra={
            "user_id": user_id,
            "by": actor.user_id,
            "roles": user.roles,
            "active": user.active,
            "password_reset": changes.password is not None,
        },
    )
    return user


async def _load_user(users: UserRepository, user_id: str) -> User:
    user = await users.get(user_id)
    if user is None:
        raise NotFound(f"no user {user_id!r}", user_id=user_id)
    return user


async def _new_password_hash(deps: Deps, user_id: str, password: str | None) -> str | None:
    """The new password checked against the policy and hashed (before the transaction: slow)."""
    if password is None:
        return None
    user = await _load_user(deps.repos.users, user_id)
    check_password(deps.password_policy, password, username=user.username)
    return await deps.passwords.hash(password)


async def _other_active_admins(users: UserRepository, user: User, change: UserChange) -> int:
    """What the last-admin rule needs, read only when the change touches an administrator."""
    if not user.touches_admin(change):
        return 0
    await users.guard_admins()
    return await users.count_other_active_admins(user.id)


# --- login, refresh, logout --------------------------------------------------------------------


async def login(deps: Deps, username: str, password: str, client: str) -> LoginResult:
    """Check the password, unless this client or account must wait (:class:`Throttled`).

    At most ``max_concurrent_logins`` run at once in this process (argon2 is costly
    on purpose); more are refused at once with a one-second Retry-After.
    """
    if deps.logins_in_flight >= deps.max_concurrent_logins:
        raise Throttled(1, "too many logins in progress; try again in 1 s")
    deps.logins_in_flight += 1
    try:
        return await _login(deps, username, password, client)
    finally:
        deps.logins_in_flight -= 1


async def _login(deps: Deps, username: str, password: str, client: str) -> LoginResult:
    key = username_key(username)
    keys = {"client": f"client:{client}", "pair": f"pair:{key}|{client}", "account": f"account:{key}"}
    await _count_attempt(deps, keys, client)
    user = await deps.repos.users.by_username_key(key)
    # What was typed as a username is logged only when it names an account: people
    # sometimes type their password into the username field.
    who = {"username": user.username, "user_id": user.id} if user else {"username": None}
    ok = await deps.passwords.verify(user.password_hash if user else None, password)
    if not ok or user is None or not user.can_log_in():
        log.warning("login failed", extra={**who, "client": client})
        raise InvalidCredentials(INVALID_CREDENTIALS)
    await deps.repos.attempts.clear(keys["pair"], keys["account"])
    await deps.repos.attempts.uncount(keys["client"])
    if deps.passwords.needs_rehash(user.password_hash):
        await deps.repos.users.set_password_hash(user.id, await deps.passwords.hash(password))
    result = await _start_session(deps, user, session_id=None, session_expires=None)
    log.info("login", extra={**who, "client": client})
    return result


async def _count_attempt(deps: Deps, keys: dict[str, str], client: str) -> None:
    """Count this attempt on every key before the password is checked (parallel guesses
    cannot outrun the count), or :class:`Throttled` when one of them must wait."""
    for kind, throttle_key in keys.items():
        if (wait := await _claim(deps, throttle_key, deps.throttles[kind])) is not None:
            log.warning("login throttled", extra={"throttle": kind, "retry_after": wait, "client": client})
            raise Throttled(wait)


async def _claim(deps: Deps, key: str, policy: ThrottlePolicy) -> int | None:
    """Count one attempt on ``key`` atomically; seconds to wait instead when it must wait."""
    for _ in range(50):
        now = deps.uow.clock()
        state, version = await deps.repos.attempts.load(key)
        if (wait := retry_after(state, now)) is not None:
            return wait
        if await deps.repos.attempts.save(key, register_attempt(state, policy, now), version, policy, now):
            return None
    return 1  # a storm of attempts on one key: refuse this one rather than spin


async def _wait_until(epoch_second: int) -> None:
    """Right after a revocation, wait (under a second) so the new token's ``iat`` is valid."""
    delay = epoch_second - utcnow().timestamp()
    if delay > 0:
        await asyncio.sleep(min(delay + 0.001, 2.0))


async def _start_session(
    deps: Deps, user: User, *, session_id: str | None, session_expires: datetime | None
) -> LoginResult:
    await _wait_until(user.sessions_valid_after)
    roles = sorted(user.roles)
    session_id = session_id or deps.uow.new_id()
    principal = Principal(user.id, user.username, frozenset(roles))
    issued = deps.tokens.issuer.issue(principal, deps.tokens.access_ttl, session_id=session_id)
    now = deps.uow.clock()
    refresh_token = secrets.token_urlsafe(32)
    stored = RefreshToken(
        id=token_hash(refresh_token),
        user_id=user.id,
        session_id=session_id,
        issued_at=issued.issued_at,
        created_at=now,
        expires_at=session_expires or now + deps.tokens.refresh_ttl,
    )
    await deps.repos.refresh_tokens.add(stored)
    return LoginResult(
        issued.token,
        issued.expires_at - issued.issued_at,
        refresh_token,
        stored.seconds_left(now),
        roles,
        user.id,
        user.username,
    )


async def refresh(deps: Deps, refresh_token: str) -> LoginResult:
    """A new access token and a new refresh token for a valid, unused refresh token."""
    use = await deps.repos.refresh_tokens.use(token_hash(refresh_token), deps.uow.clock())
    token = use.token
    if token is None:
        raise InvalidRefreshToken(INVALID_REFRESH)
    if not use.first_use:
        # Used twice: one of the two holders stole it. End the session for both.
        await deps.repos.refresh_tokens.end_session(token.session_id)
        log.warning("refresh token replayed: session ended", extra={"user_id": token.user_id})
        raise InvalidRefreshToken(INVALID_REFRESH)
    user = await deps.repos.users.get(token.user_id)
    if user is None or not user.accepts_session(token.issued_at):
        raise InvalidRefreshToken(INVALID_REFRESH)
    return await _start_session(deps, user, session_id=token.session_id, session_expires=token.expires_at)


async def logout(deps: Deps, principal: Principal) -> None:
    """Revoke this access token and end its session (its refresh tokens)."""
    expires_at = principal.expires_at or int(deps.uow.clock().timestamp()) + 3600
    if principal.token_id:
        await deps.repos.revocations.revoke_token(principal.token_id, datetime.fromtimestamp(expires_at, UTC))
        deps.revocations.remember(tokens={principal.token_id: expires_at})
    if principal.session_id:
        await deps.repos.refresh_tokens.end_session(principal.session_id)
    log.info("logout", extra={"user_id": principal.user_id, "username": principal.username})


# --- permissions -------------------------------------------------------------------------------


async def set_role_permissions(deps: Deps, role: str, permissions: list[str], actor: Actor) -> Policy:
    """``role`` now holds exactly ``permissions``: stored (audited), published to every department
    (``permissions.changed``, the outbox: same transaction) and in force here once committed."""
    uow = deps.uow

    async def work(unit: GatewayUnit) -> Policy:
        policy = (await unit.policy.get()).with_role(role, permissions)
        await unit.policy.save(policy)
        at = now_millis(uow.clock)
        unit.emit(event_of_policy(policy, changed_by=actor.user_id, changed_role=role, at=at))
        return policy

    policy = await uow.run(work)
    deps.on_policy_change()
    log.info(
        "permissions changed",
        extra={"role": role, "by": actor.user_id, "version": policy.version, "permissions": permissions},
    )
    return policy


# --- erasure requests (issue 9) ------------------------------------------------------------------


async def file_erasure_request(
    deps: Deps, email: str | None, record_ids: list[str], actor: Actor
) -> ErasureRequest:
    """File a request to forget a person: stored (audited) and published as ``erasure.requested``
    (the outbox, same transaction) with only the keyed hash of the e-mail, never the e-mail."""
    uow = deps.uow
    digest = email_hash(email) if email else None

    async def work(unit: GatewayUnit) -> ErasureRequest:
        now = now_millis(uow.clock)
        request, event = ErasureRequest.file(uow.new_id(), digest, record_ids, actor.user_id, now)
        await unit.erasures.add(request)
        unit.emit(event, correlation_id=request.id)
        return request

    request = await uow.run(work)
    log.info("erasure request filed", extra={"request_id": request.id, "by": actor.user_id})
    return request


async def on_erasure_completed(
    uow: UnitOfWork[GatewayUnit], event: ErasureCompletedV1, envelope: Envelope
) -> None:
    """A department's confirmation folded into its request (the first per department counts)."""
    await _fold_erasure(uow, event, envelope, lambda r: r.confirm(event, str(envelope.event_id)))


async def on_erasure_erased(uow: UnitOfWork[GatewayUnit], event: ErasureErasedV1, envelope: Envelope) -> None:
    """A department's first pass folded into its request (the first per department counts): the
    request shows what it erased and when its recheck is due, and stays pending until the
    department's confirmation."""
    await _fold_erasure(uow, event, envelope, lambda r: r.note_erased(event, str(envelope.event_id)))


async def _fold_erasure(
    uow: UnitOfWork[GatewayUnit],
    event: ErasureCompletedV1 | ErasureErasedV1,
    envelope: Envelope,
    fold: Callable[[ErasureRequest], ErasureRequest | None],
) -> None:
    if event.department != envelope.source:
        raise DeadLetter(
            "wrong_department", f"{envelope.source} reported an erasure as department {event.department}"
        )

    async def work(unit: GatewayUnit) -> None:
        request = await unit.erasures.get(event.request_id)
        if request is None:
            raise DeadLetter("unknown_erasure_request", f"no erasure request {event.request_id}")
        folded = fold(request)
        if folded is not None:
            await unit.erasures.save(folded)

    await uow.run(work)
