"""The customer success managers the desk assigns accounts to, and round-robin assignment.

The roster and the rotation are the platform's (``crm_platform.roster``), shared with sales.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from crm_platform.roster import RosterEntry, active_ids
from crm_platform.roster import round_robin as round_robin
from crm_platform.roster import validate_roster as _validate_roster


class CsmEntry(RosterEntry):
    """One CSM on the roster, keyed by user id (the token's ``sub``): accounts store it as
    their ``csm`` and visibility compares it; ``name`` is shown only, never compared."""


def validate_roster(entries: Iterable[CsmEntry]) -> list[CsmEntry]:
    """The roster as stored: unique user ids, sorted (the round-robin order)."""
    return _validate_roster(entries, field="csms")


def active_csms(roster: Iterable[CsmEntry]) -> list[str]:
    return active_ids(roster)


@dataclass(frozen=True)
class RosterRecord:
    """The roster as stored, with who changed it last and when."""

    csms: list[CsmEntry] = field(default_factory=list)
    updated_at: datetime | None = None
    updated_by: str | None = None
