"""A fixed log-scale latency histogram with an exact count (pure, no I/O).

Memory is bounded whatever the traffic: a value ``v`` seconds lands in bucket
``1 + floor(log(v / MIN_SECONDS) / log(GROWTH))`` (bucket 0 holds everything below
``MIN_SECONDS``, including clock-skew negatives clamped to 0), values above
``MAX_SECONDS`` are clamped, so a histogram never has more than ``MAX_BUCKETS``
buckets, stored sparsely. Percentiles are nearest-rank over the buckets and report
the bucket's geometric midpoint: relative error at most ``sqrt(GROWTH) - 1``
(about 1 %). The count is exact.

Unlike a reservoir of recent samples, a bucket can be decremented exactly, so a
sample can be *replaced* (``remove`` the old value, ``add`` the new one): that is
what keeps the figures idempotent when a fact is rewritten.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TypedDict

GROWTH = 1.02
MIN_SECONDS = 1e-4  # 0.1 ms: transport latencies are milliseconds
MAX_SECONDS = 1e8  # about three years: business latencies are minutes to days
_LOG_GROWTH = math.log(GROWTH)
MAX_BUCKETS = 2 + math.ceil(math.log(MAX_SECONDS / MIN_SECONDS) / _LOG_GROWTH)
QUANTILES: tuple[tuple[str, float], ...] = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))


def bucket_of(seconds: float) -> int:
    if not seconds >= MIN_SECONDS:  # also catches NaN and negatives
        return 0
    value = min(seconds, MAX_SECONDS)
    return 1 + math.floor(math.log(value / MIN_SECONDS) / _LOG_GROWTH)


def bucket_value(index: int) -> float:
    """The value a bucket reports: the geometric midpoint of its bounds."""
    if index <= 0:
        return 0.0
    lower = MIN_SECONDS * GROWTH ** (index - 1)
    return lower * math.sqrt(GROWTH)


@dataclass
class LatencyHistogram:
    buckets: dict[int, int] = field(default_factory=dict)
    count: int = 0

    def add(self, seconds: float) -> None:
        index = bucket_of(seconds)
        self.buckets[index] = self.buckets.get(index, 0) + 1
        self.count += 1

    def remove(self, seconds: float) -> None:
        """Take back one earlier ``add(seconds)``; a value never added is ignored."""
        index = bucket_of(seconds)
        held = self.buckets.get(index, 0)
        if held <= 0:
            return
        if held == 1:
            del self.buckets[index]
        else:
            self.buckets[index] = held - 1
        self.count -= 1

    def quantile(self, q: float) -> float | None:
        """Nearest-rank quantile (``q`` in (0, 1]); ``None`` when empty."""
        if self.count == 0:
            return None
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                return bucket_value(index)
        return bucket_value(max(self.buckets))  # pragma: no cover - counts are consistent

    def summary(self) -> LatencySummary:
        p50, p95, p99 = (self.quantile(q) for _, q in QUANTILES)
        return LatencySummary(count=self.count, p50=_rounded(p50), p95=_rounded(p95), p99=_rounded(p99))


class LatencySummary(TypedDict):
    """Exact sample count and the p50/p95/p99 seconds (None while empty)."""

    count: int
    p50: float | None
    p95: float | None
    p99: float | None


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)
