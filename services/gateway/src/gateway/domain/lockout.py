"""Login throttling: growing delays per client address, per account and per both, never a lock.

Every login attempt is *counted before its password is checked* (atomically, in the
store), so parallel guesses cannot all slip past the count. Per key, the first
``free_attempts`` attempts within the memory window pass at once; after that each
attempt must wait ``base_delay`` doubled per extra attempt, up to ``max_delay``.
A successful login clears the account's counts (and undoes its own count on the
client address).

Three keys, checked in this order (see ``Accounts.login``):
- the client address: password spraying over many names from one place;
- the account from this client address: guessing one password, slowed hard;
- the account from anywhere: a distributed guess at one account. Its delay is
  capped low (a minute by default), so an anonymous attacker can slow an
  account's logins but never lock its owner out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class ThrottlePolicy:
    free_attempts: int = 5
    base_delay: timedelta = timedelta(seconds=1)
    max_delay: timedelta = timedelta(minutes=15)
    forget_after: timedelta = timedelta(minutes=15)

    def __post_init__(self) -> None:
        if self.free_attempts < 1:
            raise ValueError("free_attempts must be at least 1")
        if min(self.base_delay, self.max_delay, self.forget_after) <= timedelta(0):
            raise ValueError("delays and forget_after must be positive")

    def delay_after(self, attempts: int) -> timedelta:
        """How long the next attempt must wait after ``attempts`` counted ones."""
        over = attempts - self.free_attempts
        if over < 0:
            return timedelta(0)
        return min(self.max_delay, self.base_delay * (1 << min(over, 40)))


@dataclass(frozen=True)
class Attempts:
    """What is remembered about one key's recent login attempts."""

    attempts: int = 0
    last_attempt: datetime | None = None
    next_allowed: datetime | None = None

    def expires_at(self, policy: ThrottlePolicy) -> datetime | None:
        """After this instant the record no longer matters and may be deleted."""
        if self.last_attempt is None:
            return None
        ends = [self.last_attempt + policy.forget_after]
        if self.next_allowed is not None:
            ends.append(self.next_allowed)
        return max(ends)


def retry_after(state: Attempts, now: datetime) -> int | None:
    """Seconds until the next attempt is allowed (rounded up, at least 1), or None: go ahead."""
    if state.next_allowed is None or state.next_allowed <= now:
        return None
    return max(1, math.ceil((state.next_allowed - now).total_seconds()))


def register_attempt(state: Attempts, policy: ThrottlePolicy, now: datetime) -> Attempts:
    """The state after one more attempt at ``now`` (the caller checked it was allowed)."""
    if state.last_attempt is not None and now - state.last_attempt >= policy.forget_after:
        state = Attempts()
    attempts = state.attempts + 1
    delay = policy.delay_after(attempts)
    return Attempts(attempts, now, now + delay if delay else None)
