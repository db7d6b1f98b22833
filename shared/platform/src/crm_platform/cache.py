"""Configuration read on every event, kept in the process for a few seconds.

A handoff in sales reads the SLA and the rep roster, a behaviour in leads the
scoring rules: each a MongoDB round trip per event (issue 12's profile: sales made
9 round trips per handoff). They change a few times a day, by hand. A
:class:`TtlCache` keeps what was loaded for ``ttl_seconds``
(``CRM_CONFIG_CACHE_SECONDS``, default 5; 0 turns caching off):

- the replica that changes a value drops it at once, and again once the change has
  committed (``Tx.after_commit``), so a value read by another transaction between the
  write and its commit is never kept;
- other replicas see the change within ``ttl_seconds``: a rep deactivated on one pod
  may still be dealt a lead by another for that long (documented in the sales README);
- a value loaded by a transaction that has itself written that value is not kept
  (the caller passes ``cacheable=False``): it may never commit.

A load that started before the latest invalidation is returned to its caller but not
kept (the invalidation count is checked), so a slow read cannot put an older value back. A load in a
transaction passes ``since``: the invalidation count when its transaction began
(:attr:`crm_platform.mongo.Tx.began`), for it reads the snapshot its first operation fixed.
A transaction that began before a change committed and loads after the change dropped the
cache reads the old value: it gets it, but it is not kept (it was kept, and for
``ttl_seconds`` sales refused a rep just activated on this very replica: README, "Tests").
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Invalidations:
    """Every cache's invalidations in this process, counted: an order, not a time."""

    count = 0


def invalidations() -> int:
    """How many invalidations this process's caches have seen so far (any cache)."""
    return _Invalidations.count


@dataclass
class TtlCache(Generic[K, V]):
    ttl_seconds: float
    monotonic: Callable[[], float] = time.monotonic
    _entries: dict[K, tuple[float, V]] = field(default_factory=dict)
    _invalidated: int = 0  # the count (invalidations()) at this cache's latest invalidation
    hits: int = 0
    misses: int = 0

    async def get(
        self, key: K, load: Callable[[], Awaitable[V]], *, cacheable: bool = True, since: int | None = None
    ) -> V:
        """The value kept for ``key`` if fresh, else ``load()``, kept when ``cacheable`` and
        this cache was not invalidated after ``since`` (default: the load's start; a load in
        a transaction: ``Tx.began``, the count when it began, before its snapshot was fixed)."""
        now = self.monotonic()
        entry = self._entries.get(key)
        if cacheable and entry is not None and entry[0] > now:
            self.hits += 1
            return entry[1]
        self.misses += 1
        as_of = invalidations() if since is None else since
        value = await load()
        if cacheable and self.ttl_seconds > 0 and self._invalidated <= as_of:
            self._entries[key] = (self.monotonic() + self.ttl_seconds, value)
        return value

    def invalidate(self) -> None:
        """Forget every value, and refuse to keep loads that started (or whose transaction
        began) before now."""
        _Invalidations.count += 1
        self._invalidated = _Invalidations.count
        self._entries.clear()
