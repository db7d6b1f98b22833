"""Who sees and acts on which record: reps their own book, managers the team.

Decision (documented in the README): a record outside a rep's book answers
**403** (not 404), for reads and writes alike. The brief requires 403 for a
verdict by a rep who is not the owner; using the same answer for reads keeps
one rule everywhere, and ids are opaque so nothing is enumerable.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from crm_platform.errors import Forbidden

REP = "sales_rep"
MANAGER_ROLES = frozenset({"sales_manager", "admin"})


@dataclass(frozen=True)
class Actor:
    """The acting user. ``user_id`` (the token's ``sub``) is the identity every owner,
    roster entry and audit field stores and every check compares; ``name`` (the token's
    display ``name``) is for logs only and never decides anything."""

    user_id: str
    is_manager: bool
    name: str = ""

    @classmethod
    def of(cls, user_id: str, roles: Iterable[str], name: str = "") -> Actor:
        return cls(user_id, bool(MANAGER_ROLES & set(roles)), name)


def can_access(actor: Actor, owner: str | None) -> bool:
    """Managers and admins reach every record; a rep only the records they own."""
    return actor.is_manager or (owner is not None and owner == actor.user_id)


def require_access(actor: Actor, owner: str | None, what: str) -> None:
    if not can_access(actor, owner):
        raise Forbidden(
            f"this {what} belongs to another rep's book; only its owner or a sales manager may use it",
            owner_is_you=False,
        )


def owner_scope(actor: Actor, requested_owner: str | None) -> str | None:
    """The owner filter a listing must apply: a rep is always scoped to themself."""
    if actor.is_manager:
        return requested_owner
    return actor.user_id
