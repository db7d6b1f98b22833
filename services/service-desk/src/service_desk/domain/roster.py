"""The customer success managers the desk assigns accounts to, and round-robin assignment."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from crm_platform.errors import RuleViolation
from pydantic import BaseModel, ConfigDict, Field, field_validator


class CsmEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    username: str = Field(min_length=1, max_length=100)
    active: bool = True

    @field_validator("username")
    @classmethod
    def _strip(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("username must not be blank")
        return value


def validate_roster(entries: Iterable[CsmEntry]) -> list[CsmEntry]:
    """The roster as stored: unique usernames, sorted (the round-robin order)."""
    by_name: dict[str, CsmEntry] = {}
    for entry in entries:
        if entry.username in by_name:
            raise RuleViolation(
                f"CSM {entry.username!r} is listed twice", field="csms", username=entry.username
            )
        by_name[entry.username] = entry
    return [by_name[name] for name in sorted(by_name)]


def active_csms(roster: Iterable[CsmEntry]) -> list[str]:
    return sorted({e.username for e in roster if e.active})


def round_robin(active: Sequence[str], turn: int) -> str | None:
    """The CSM whose turn it is; ``turn`` is a counter incremented once per assignment."""
    ordered = sorted(set(active))
    if not ordered:
        return None
    return ordered[turn % len(ordered)]
