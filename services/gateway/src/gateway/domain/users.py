"""A gateway account (:class:`User`) and the rules about changing it.

A user's roles, activity and password decide what their tokens may do, so changing
any of them *revokes* the user's sessions: every token issued up to that second is
refused from then on (``sessions_valid_after``, compared with the token's ``iat``).
No change may leave the platform without an active administrator.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from crm_platform.auth import Role
from crm_platform.errors import Conflict, RuleViolation

from gateway.domain.passwords import PasswordPolicy, PolicyViolation, check_username, username_key

ADMIN = str(Role.ADMIN)


def removes_last_admin(
    *,
    was_admin: bool,
    was_active: bool,
    new_roles: Iterable[str],
    new_active: bool,
    other_active_admins: int,
) -> bool:
    """Would this change leave the platform without an active administrator?"""
    if not (was_admin and was_active):
        return False
    still_admin = Role.ADMIN in set(new_roles) and new_active
    return not still_admin and other_active_admins == 0


def role_names(roles: Iterable[str]) -> list[str]:
    """Roles as stored: their names, each once, sorted; at least one."""
    names = sorted({str(r) for r in roles})
    if not names:
        raise RuleViolation("a user needs at least one role", field="roles")
    return names


def checked_username(username: str) -> str:
    """The username as it will be stored (trimmed), or :class:`RuleViolation`."""
    try:
        return check_username(username)
    except PolicyViolation as exc:
        raise RuleViolation(exc.message, field=exc.field) from None


def check_password(policy: PasswordPolicy, password: str, *, username: str) -> None:
    """The password policy as a :class:`RuleViolation` (422 at the API)."""
    try:
        policy.check(password, username=username)
    except PolicyViolation as exc:
        raise RuleViolation(exc.message, field=exc.field) from None


def revoked_from(now: datetime) -> int:
    """``sessions_valid_after`` for a revocation at ``now``: whole seconds, like a token's
    ``iat``, so every token issued up to now has ``iat`` below it (a login in the rest of
    this second waits for it)."""
    return int(now.timestamp()) + 1


@dataclass(frozen=True)
class UserChange:
    """What ``PATCH /users/{id}`` asks for: only the fields given change.

    ``password_hash`` is the new password already hashed (hashing is slow I/O, done
    before the transaction); its plain text never reaches the entity.
    """

    roles: list[str] | None = None
    active: bool | None = None
    password_hash: str | None = None
    display_name: str | None = None


@dataclass(frozen=True)
class Applied:
    changed: bool  # anything to save
    revoked: bool  # the user's sessions end (roles, activity or password changed)


@dataclass
class User:
    id: str
    username: str
    username_key: str
    display_name: str
    roles: list[str]
    active: bool
    password_hash: str
    created_at: datetime
    updated_at: datetime
    password_changed_at: datetime
    sessions_valid_after: int  # epoch second: tokens issued before it are refused

    @classmethod
    def register(
        cls,
        *,
        user_id: str,
        username: str,
        roles: Iterable[str],
        display_name: str | None,
        password_hash: str,
        now: datetime,
    ) -> User:
        """A new, active account (``username`` already checked with :func:`checked_username`)."""
        return cls(
            id=user_id,
            username=username,
            username_key=username_key(username),
            display_name=display_name or username,
            roles=role_names(roles),
            active=True,
            password_hash=password_hash,
            created_at=now,
            updated_at=now,
            password_changed_at=now,
            sessions_valid_after=int(now.timestamp()),
        )

    @property
    def is_admin(self) -> bool:
        return ADMIN in self.roles

    def can_log_in(self) -> bool:
        return self.active

    def accepts_session(self, issued_at: int) -> bool:
        """May a session whose tokens were issued at ``issued_at`` (epoch s) go on?"""
        return self.active and issued_at >= self.sessions_valid_after

    def touches_admin(self, change: UserChange) -> bool:
        """Does ``change`` alter an administrator's roles or activity (the last-admin rule applies)?"""
        changes_access = self._new_roles(change) != self.roles or self._new_active(change) != self.active
        return self.is_admin and changes_access

    def apply(self, change: UserChange, now: datetime, *, other_active_admins: int = 1) -> Applied:
        """Apply ``change``: what changed, and whether the user's sessions were revoked.

        ``other_active_admins`` is how many other active administrators there are
        (needed only when :meth:`touches_admin`); leaving none is a :class:`Conflict`.
        """
        roles, active = self._new_roles(change), self._new_active(change)
        if removes_last_admin(
            was_admin=self.is_admin,
            was_active=self.active,
            new_roles=roles,
            new_active=active,
            other_active_admins=other_active_admins,
        ):
            raise Conflict("this change would leave no active administrator", user_id=self.id)
        revoke = roles != self.roles or active != self.active or change.password_hash is not None
        if not revoke and change.display_name is None:
            return Applied(changed=False, revoked=False)
        self.roles, self.active = roles, active
        if change.password_hash is not None:
            self.password_hash = change.password_hash
            self.password_changed_at = now
        if change.display_name is not None:
            self.display_name = change.display_name
        self.updated_at = now
        if revoke:
            self.sessions_valid_after = revoked_from(now)
        return Applied(changed=True, revoked=revoke)

    def _new_roles(self, change: UserChange) -> list[str]:
        return role_names(change.roles) if change.roles is not None else self.roles

    def _new_active(self, change: UserChange) -> bool:
        return change.active if change.active is not None else self.active
