"""Round-robin assignment among the active reps, deterministic given a counter.

The counter lives in one document that the assigning transaction increments,
so two concurrent assignments conflict on it and one retries: each value of the
counter is used exactly once and the pick is ``sorted(active)[counter % n]``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class AssignedBy(StrEnum):
    ROUND_ROBIN = "round_robin"
    ACCOUNT_OWNER = "account_owner"
    MANAGER = "manager"
    NONE = "unassigned"


@dataclass(frozen=True)
class Assignment:
    owner: str | None
    how: AssignedBy
    uses_counter: bool


def rotation(active: Iterable[str]) -> list[str]:
    """The order reps take turns in: by user id, each once."""
    return sorted(set(active))


def round_robin(active: Iterable[str], counter: int) -> str | None:
    reps = rotation(active)
    if not reps:
        return None
    return reps[counter % len(reps)]


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
