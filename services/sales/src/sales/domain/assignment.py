"""Who gets a lead or an upsell: the rep roster and round-robin among its active reps.

The rotation is the platform's (``crm_platform.roster``: ``sorted(active)[turn % n]``);
the turn comes from ``crm_platform.counters.RoundRobinCounter``, taken as its own
atomic write outside the assigning transaction (so concurrent assignments never
conflict on it; an aborted transaction skips a turn).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from crm_platform.errors import RuleViolation
from crm_platform.roster import rotation as rotation
from crm_platform.roster import round_robin as round_robin


class AssignedBy(StrEnum):
    ROUND_ROBIN = "round_robin"
    ACCOUNT_OWNER = "account_owner"
    MANAGER = "manager"
    NONE = "unassigned"


@dataclass(frozen=True)
class Rep:
    """A rep on the roster: ``user_id`` (the token's ``sub``) is the identity; ``name`` is display only."""

    user_id: str
    active: bool
    name: str | None = None
    updated_at: datetime | None = None
    updated_by: str | None = None


@dataclass(frozen=True)
class Assignment:
    owner: str | None
    how: AssignedBy
    uses_counter: bool


def plan_round_robin(active: Iterable[str]) -> Assignment:
    """Whether a round-robin pick is possible (it consumes a counter value) or not."""
    if rotation(active):
        return Assignment(None, AssignedBy.ROUND_ROBIN, uses_counter=True)
    return Assignment(None, AssignedBy.NONE, uses_counter=False)


def plan_upsell_owner(account_owner: str, active: Iterable[str]) -> Assignment:
    """An upsell goes to the account's sales owner if active, else round-robin.

    With nobody active at all it stays with the account owner of record (it is
    never dropped); the handler logs a warning.
    """
    reps = rotation(active)
    if account_owner in reps:
        return Assignment(account_owner, AssignedBy.ACCOUNT_OWNER, uses_counter=False)
    if reps:
        return Assignment(None, AssignedBy.ROUND_ROBIN, uses_counter=True)
    return Assignment(account_owner, AssignedBy.ACCOUNT_OWNER, uses_counter=False)


def plan_manager_assignment(owner: str | None, active: Iterable[str]) -> Assignment:
    """A manager names an active rep, or (no one named) the next in the rotation."""
    reps = rotation(active)
    if owner is not None and owner not in reps:
        raise RuleViolation(f"{owner!r} is not an active rep in the sales roster", owner=owner, active=reps)
    if not reps:
        raise RuleViolation("no active rep in the sales roster to assign to (PUT /reps)")
    if owner is not None:
        return Assignment(owner, AssignedBy.MANAGER, uses_counter=False)
    return Assignment(None, AssignedBy.ROUND_ROBIN, uses_counter=True)
