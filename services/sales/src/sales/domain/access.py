"""Who sees and acts on which record: reps their own book, managers the team.

Decision (documented in the README): a record outside a rep's book answers
**403** (not 404), for reads and writes alike. The brief requires 403 for a
verdict by a rep who is not the owner; using the same answer for reads keeps
one rule everywhere, and ids are opaque so nothing is enumerable.
"""

from __future__ import annotations

from crm_platform.actor import Actor
from crm_platform.errors import Forbidden

MANAGER_ROLES = frozenset({"sales_manager", "admin"})
TEAM_VIEW_ROLES = MANAGER_ROLES | {"analyst"}


def is_manager(actor: Actor) -> bool:
    return actor.has_any(MANAGER_ROLES)


def can_access(actor: Actor, owner: str | None) -> bool:
    """Managers and admins reach every record; a rep only the records they own."""
    return is_manager(actor) or (owner is not None and owner == actor.user_id)


def require_access(actor: Actor, owner: str | None, what: str) -> None:
    if not can_access(actor, owner):
        raise Forbidden(
            f"this {what} belongs to another rep's book; only its owner or a sales manager may use it",
            owner_is_you=False,
        )


def owner_scope(actor: Actor, requested_owner: str | None) -> str | None:
    """The owner filter a listing must apply: a rep is always scoped to themself."""
    if is_manager(actor):
        return requested_owner
    return actor.user_id


def forecast_scope(actor: Actor, requested_owner: str | None) -> str | None:
    """Managers, admins and analysts see the team (or one rep); a rep only their own book."""
    return requested_owner if actor.has_any(TEAM_VIEW_ROLES) else actor.user_id
