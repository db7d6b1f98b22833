"""The log-scale latency histogram: exact counts, percentiles within 1 %, bounded memory."""

from __future__ import annotations

import math
import random

import pytest
from analytics.domain.histogram import (
    GROWTH,
    MAX_BUCKETS,
    MAX_SECONDS,
    LatencyHistogram,
    bucket_of,
    bucket_value,
)

REL = math.sqrt(GROWTH) - 1 + 1e-9


def exact_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def test_empty_histogram_has_no_percentiles():
    h = LatencyHistogram()
    assert h.summary() == {"count": 0, "p50": None, "p95": None, "p99": None}


def test_one_to_hundred_seconds():
    h = LatencyHistogram()
    for v in range(1, 101):
        h.add(float(v))
    s = h.summary()
    assert s["count"] == 100
    assert s["p50"] == pytest.approx(50, rel=REL)
    assert s["p95"] == pytest.approx(95, rel=REL)
    assert s["p99"] == pytest.approx(99, rel=REL)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_percentiles_match_exact_ones_within_bucket_error(seed):
    rng = random.Random(seed)
    values = [rng.lognormvariate(-4, 2) for _ in range(5000)]  # ms to minutes
    h = LatencyHistogram()
    for v in values:
        h.add(v)
    for q in (0.5, 0.95, 0.99):
        assert h.quantile(q) == pytest.approx(exact_quantile(values, q), rel=REL)
    assert h.count == 5000


def test_remove_takes_back_exactly_one_sample():
    h = LatencyHistogram()
    for v in (0.01, 0.01, 2.0):
        h.add(v)
    h.remove(0.01)
    assert h.count == 2
    h.remove(0.01)
    h.remove(0.01)  # never added a third time: ignored
    assert h.count == 1
    assert h.quantile(0.5) == pytest.approx(2.0, rel=REL)


def test_tiny_negative_and_huge_values_are_clamped():
    assert bucket_of(-3.0) == 0
    assert bucket_of(0.0) == 0
    assert bucket_of(float("nan")) == 0
    assert bucket_value(0) == 0.0
    assert bucket_of(MAX_SECONDS * 1000) == bucket_of(MAX_SECONDS) < MAX_BUCKETS


def test_memory_is_bounded_whatever_the_number_of_samples():
    h = LatencyHistogram()
    rng = random.Random(7)
    for _ in range(50_000):
        h.add(10 ** rng.uniform(-6, 9))
    assert h.count == 50_000
    assert len(h.buckets) <= MAX_BUCKETS
