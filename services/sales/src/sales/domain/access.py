"""Who sees and acts on which record: reps their own book, managers the team.

Decision (documented in the README): a record outside a rep's book answers
**403** (not 404), for reads and writes alike. The brief requires 403 for a
verdict by a rep who is not the owner; using the same answer for reads keeps
one rule everywhere, and ids are opaque so nothing is enumerable.
"""

from __future__ import annotations

from crm_platform.actor import Actor
from crm_platform.errors import Forbidden, RuleViolation
from crm_platform.field_rules import applies_to

MANAGER_ROLES = frozenset({"sales_manager", "admin"})
TEAM_VIEW_ROLES = MANAGER_ROLES | {"analyst"}


def reads_pseudonymised(actor: Actor) -> bool:
    """Analysts and executives (and nothing else: crm_platform.field_rules) read the team's
    records when an administrator grants them a route (they hold none by default), with personal
    data pseudonymised; they never act on one. An analyst who is also a rep is a rep here."""
    return applies_to(actor.roles)


def is_manager(actor: Actor) -> bool:
    return actor.has_any(MANAGER_ROLES)


def can_access(actor: Actor, owner: str | None) -> bool:
    """Managers and admins reach every record; a rep only the records they own."""
    return is_manager(actor) or (owner is not None and owner == actor.user_id)


def require_read(actor: Actor, owner: str | None, what: str) -> None:
    """One record's read routes: whoever may act on it, and the list readers (analysts and
    executives reach these routes only by a grant, and read them pseudonymised)."""
    if not reads_pseudonymised(actor):
        require_access(actor, owner, what)


def require_access(actor: Actor, owner: str | None, what: str) -> None:
    if not can_access(actor, owner):
        raise Forbidden(
            f"this {what} belongs to another rep's book; only its owner or a sales manager may use it",
            owner_is_you=False,
        )


def owner_scope(actor: Actor, requested_owner: str | None) -> str | None:
    """The owner filter a listing must apply: a rep is always scoped to themself; managers,
    admins, analysts and executives (who reach a list only by a grant) see the team's."""
    if is_manager(actor) or reads_pseudonymised(actor):
        return requested_owner
    return actor.user_id


def forecast_scope(actor: Actor, requested_owner: str | None) -> str | None:
    """Managers, admins and analysts see the team (or one rep); a rep only their own book."""
    return requested_owner if actor.has_any(TEAM_VIEW_ROLES) else actor.user_id


def owner_for_new_record(actor: Actor, requested: str | None, active_reps: list[str]) -> str:
    """Who owns an account, contact or opportunity sales creates itself.

    A rep creates in their own book (naming another owner is refused); a manager or admin
    may name an active rep, and owns it themself when naming nobody."""
    if not is_manager(actor):
        if requested not in (None, actor.user_id):
            raise Forbidden(
                "a rep creates records in their own book; a sales manager may name another owner",
                field="body.owner",
            )
        return actor.user_id
    if requested is None or requested == actor.user_id:
        return actor.user_id
    if requested not in active_reps:
        raise RuleViolation(
            f"invalid input: body.owner: {requested!r} is not an active rep in the sales roster",
            field="body.owner",
        )
    return requested
