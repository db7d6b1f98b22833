"""Brute-force protection: lock a username for a while after repeated failed logins.

Failures are counted per username (known or not, so the lockout does not reveal
which accounts exist) within a sliding window that starts at the first failure.
The M-th failure inside the window locks the name for ``lock_for``; while it is
locked no password is even checked. A successful login clears the record.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime, timedelta


@dataclass(frozen=True)
class LockoutPolicy:
    max_failures: int = 5
    window: timedelta = timedelta(minutes=15)
    lock_for: timedelta = timedelta(minutes=15)

    def __post_init__(self) -> None:
        if self.max_failures < 1:
            raise ValueError("max_failures must be at least 1")
        if self.window <= timedelta(0) or self.lock_for <= timedelta(0):
            raise ValueError("window and lock_for must be positive")


@dataclass(frozen=True)
class Attempts:
    """What is remembered about one username's failed logins."""

    failures: int = 0
    window_started: datetime | None = None
    locked_until: datetime | None = None

    def expires_at(self, policy: LockoutPolicy) -> datetime | None:
        """After this instant the record no longer matters and may be deleted."""
        ends = [
            t
            for t in (self.locked_until, self.window_started + policy.window if self.window_started else None)
            if t
        ]
        return max(ends) if ends else None


def retry_after(state: Attempts, now: datetime) -> int | None:
    """Seconds until the name unlocks (rounded up, at least 1), or None if it is not locked."""
    if state.locked_until is None or state.locked_until <= now:
        return None
    return max(1, math.ceil((state.locked_until - now).total_seconds()))


def register_failure(state: Attempts, policy: LockoutPolicy, now: datetime) -> Attempts:
    """The state after one more failed login at ``now``."""
    if state.locked_until is not None and state.locked_until > now:
        return state  # already locked: attempts while locked neither extend nor count
    window_open = state.window_started is not None and now - state.window_started < policy.window
    if not window_open:
        state = Attempts(failures=0, window_started=now, locked_until=None)
    failures = state.failures + 1
    if failures >= policy.max_failures:
        # Locked: the count starts afresh once the lock expires.
        return Attempts(failures=0, window_started=None, locked_until=now + policy.lock_for)
    return replace(state, failures=failures, locked_until=None)


def register_success(_: Attempts) -> Attempts:
    return Attempts()
