"""Reps' response times (pure): per rep, reached -> answered p50/p90, within SLA, what waits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sales.domain.response_times import Answer, RepResponseTimes, nearest_rank, per_rep

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def _answered(owner: str | None, minutes: float, sla_minutes: float = 60) -> Answer:
    reached = NOW - timedelta(hours=5)
    due = reached + timedelta(minutes=sla_minutes)
    return Answer(owner, reached, due, reached + timedelta(minutes=minutes))


def test_nearest_rank_percentiles() -> None:
    assert nearest_rank([], 0.5) is None
    assert nearest_rank([5.0], 0.9) == 5.0
    values = [float(v) for v in range(1, 11)]  # 1..10
    assert nearest_rank(values, 0.5) == 5.0
    assert nearest_rank(values, 0.9) == 9.0
    assert nearest_rank(list(reversed(values)), 0.9) == 9.0


def test_each_reps_answers_and_waiting_items_slowest_median_first() -> None:
    waiting_overdue = Answer("ben", NOW - timedelta(hours=3), NOW - timedelta(hours=2))
    waiting_in_time = Answer("ben", NOW - timedelta(minutes=10), NOW + timedelta(minutes=50))
    answers = [
        *(_answered("ada", m) for m in (10, 20, 30, 40, 90)),  # 90 min is past the 60 min SLA
        _answered("ben", 120),
        waiting_overdue,
        waiting_in_time,
        Answer(None, NOW - timedelta(minutes=5), NOW + timedelta(minutes=55)),  # no rep holds it
    ]
    out = per_rep(answers, NOW)
    assert [r.owner for r in out] == ["ben", "ada", ""]
    assert out[0] == RepResponseTimes("ben", 1, 7200.0, 7200.0, 0, 2, 1, 10800.0)
    assert out[1] == RepResponseTimes("ada", 5, 1800.0, 5400.0, 4, 0, 0, None)
    assert out[2] == RepResponseTimes("", 0, None, None, 0, 1, 0, 300.0)


def test_an_answer_recorded_before_the_item_reached_the_rep_counts_as_zero() -> None:
    reached = NOW - timedelta(minutes=30)
    early = Answer("ada", reached, reached + timedelta(hours=1), reached - timedelta(seconds=5))
    assert per_rep([early], NOW)[0].p50_seconds == 0.0
