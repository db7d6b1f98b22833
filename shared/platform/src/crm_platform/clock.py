"""Time as a dependency, and MongoDB's precision (milliseconds) applied once.

Handlers take their time from a :data:`Clock` (``system_clock`` in production,
a :class:`ManualClock` in tests), so SLA and due-date rules are testable at any
instant. A stored datetime comes back from MongoDB truncated to milliseconds:
:func:`to_millis` applies that before anything is stored or emitted, so what a
write answers, what a read returns and what an event says agree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    """Now, aware, in UTC."""
    return datetime.now(UTC)


def to_millis(moment: datetime) -> datetime:
    """``moment`` in UTC truncated to milliseconds; a naive datetime is taken as UTC."""
    utc = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return utc.replace(microsecond=utc.microsecond // 1000 * 1000)


def now_millis(clock: Clock = system_clock) -> datetime:
    return to_millis(clock())


@dataclass
class ManualClock:
    """A clock that only moves when told to (tests, simulations)."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now = self.now + timedelta(**delta)
        return self.now
