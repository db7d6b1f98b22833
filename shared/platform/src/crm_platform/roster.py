"""A department's roster of people who take turns, and round-robin among its active members.

Members are user ids (the token's ``sub``), never usernames; a ``name`` is shown
only. The rotation is the active user ids sorted, each once, and the member whose
turn it is for turn number ``t`` is ``rotation[t % n]``. The turn number comes from
:class:`crm_platform.counters.RoundRobinCounter` (see there for its one
concurrency behaviour).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from crm_platform.errors import RuleViolation


class RosterEntry(BaseModel):
    """One member of a roster, keyed by user id; ``name`` is shown only, never compared."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user_id: str = Field(
        min_length=1,
        max_length=100,
        description="The user's id (the token's sub), as listed by the gateway's GET /users "
        "(admin); never a username",
    )
    name: str | None = Field(
        default=None, min_length=1, max_length=200, description="Display name, shown only"
    )
    active: bool = True

    @field_validator("user_id")
    @classmethod
    def _strip(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("user_id must not be blank")
        return value


E = TypeVar("E", bound=RosterEntry)


def validate_roster(entries: Iterable[E], *, field: str = "roster") -> list[E]:
    """The roster as stored: unique user ids, sorted (the round-robin order)."""
    by_id: dict[str, E] = {}
    for entry in entries:
        if entry.user_id in by_id:
            raise RuleViolation(f"{entry.user_id!r} is listed twice", field=field, user_id=entry.user_id)
        by_id[entry.user_id] = entry
    return [by_id[user_id] for user_id in sorted(by_id)]


def active_ids(entries: Iterable[RosterEntry]) -> list[str]:
    return rotation(e.user_id for e in entries if e.active)


def rotation(active: Iterable[str]) -> list[str]:
    """The order members take turns in: by user id, each once."""
    return sorted(set(active))


def round_robin(active: Iterable[str], turn: int) -> str | None:
    """The member whose turn ``turn`` is, or None when nobody is active."""
    members = rotation(active)
    if not members:
        return None
    return members[turn % len(members)]
