"""The customer success managers the desk assigns accounts to, and round-robin assignment."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from crm_platform.errors import RuleViolation
from pydantic import BaseModel, ConfigDict, Field, field_validator


class CsmEntry(BaseModel):
    """One CSM on the roster, keyed by user id (the token's ``sub``): accounts store it as
    their ``csm`` and visibility compares it; ``name`` is shown only, never compared."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user_id: str = Field(
        min_length=1,
        max_length=100,
        description="The CSM's user id (the token's sub), as listed by the gateway's GET /users "
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


def validate_roster(entries: Iterable[CsmEntry]) -> list[CsmEntry]:
    """The roster as stored: unique user ids, sorted (the round-robin order)."""
    by_id: dict[str, CsmEntry] = {}
    for entry in entries:
        if entry.user_id in by_id:
            raise RuleViolation(f"CSM {entry.user_id!r} is listed twice", field="csms", user_id=entry.user_id)
        by_id[entry.user_id] = entry
    return [by_id[user_id] for user_id in sorted(by_id)]


def active_csms(roster: Iterable[CsmEntry]) -> list[str]:
    return sorted({e.user_id for e in roster if e.active})


def round_robin(active: Sequence[str], turn: int) -> str | None:
    """The CSM whose turn it is; ``turn`` is a counter incremented once per assignment."""
    ordered = sorted(set(active))
    if not ordered:
        return None
    return ordered[turn % len(ordered)]
