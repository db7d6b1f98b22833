"""Reps' response times: from a lead reaching a rep's inbox to their accept or reject (pure).

For the sales manager: per rep (the item's owner), over the items that reached them in a
window, how many they answered, the time to answer (p50 and p90, nearest rank), how many were
answered within the lead response SLA, and what is still waiting (how many, how many past
their due time, the oldest one's age). An item reaches a rep when it is received, or when it
is (re)assigned to them afterwards: a reassigned item's clock starts at its reassignment.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

UNASSIGNED = ""  # items no rep holds (no active rep when they arrived)


@dataclass(frozen=True)
class Answer:
    """One inbox item as the response times read it."""

    owner: str | None
    reached_at: datetime
    due_at: datetime
    decided_at: datetime | None = None


@dataclass(frozen=True)
class RepResponseTimes:
    owner: str  # "" for items no rep holds
    answered: int
    p50_seconds: float | None
    p90_seconds: float | None
    within_sla: int
    pending: int
    pending_overdue: int
    oldest_pending_seconds: float | None


def nearest_rank(values: list[float], q: float) -> float | None:
    """The nearest-rank ``q`` percentile of ``values`` (None when there are none)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def per_rep(answers: Iterable[Answer], now: datetime) -> list[RepResponseTimes]:
    """Each rep's figures, slowest median first (the reps to look at come first)."""
    waits: dict[str, list[float]] = defaultdict(list)
    in_sla: dict[str, int] = defaultdict(int)
    pending: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    for a in answers:
        owner = a.owner or UNASSIGNED
        if a.decided_at is None:
            pending[owner].append((max(0.0, (now - a.reached_at).total_seconds()), a.due_at < now))
            continue
        waits[owner].append(max(0.0, (a.decided_at - a.reached_at).total_seconds()))
        in_sla[owner] += a.decided_at <= a.due_at
    out = [
        RepResponseTimes(
            owner=owner,
            answered=len(waits[owner]),
            p50_seconds=nearest_rank(waits[owner], 0.5),
            p90_seconds=nearest_rank(waits[owner], 0.9),
            within_sla=in_sla[owner],
            pending=len(pending[owner]),
            pending_overdue=sum(overdue for _, overdue in pending[owner]),
            oldest_pending_seconds=max((age for age, _ in pending[owner]), default=None),
        )
        for owner in sorted(set(waits) | set(pending))
    ]
    return sorted(out, key=lambda r: (-(r.p50_seconds or -1.0), r.owner))
