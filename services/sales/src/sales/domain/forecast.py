"""Pipeline value per stage and the weighted forecast.

``value`` of a stage is the sum of its opportunities' amounts (no amount counts
as 0); ``weighted`` is value x the stage's win probability. The weighted
forecast is the sum over every stage, so won deals count in full (probability
1.0 by default) and lost ones not at all; ``open_value`` and ``weighted_open``
are the same figures for the open stages only (the pipeline still to close).
Stages no longer in the pipeline (there should be none: a stage with open
opportunities cannot be removed) are reported after the configured ones with
probability 0.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sales.domain.pipeline import WON, Pipeline, is_closed


@dataclass(frozen=True)
class StageTotal:
    stage: str
    count: int
    amount: float


@dataclass(frozen=True)
class StageForecast:
    stage: str
    probability: float
    closed: bool
    count: int
    value: float
    weighted: float


@dataclass(frozen=True)
class Forecast:
    stages: tuple[StageForecast, ...]
    open_count: int
    open_value: float
    weighted_open: float
    won_value: float
    weighted_forecast: float


def _money(x: float) -> float:
    return round(x, 2)


def forecast(pipeline: Pipeline, totals: Iterable[StageTotal]) -> Forecast:
    counts: dict[str, int] = {}
    values: dict[str, float] = {}
    for t in totals:
        counts[t.stage] = counts.get(t.stage, 0) + t.count
        values[t.stage] = values.get(t.stage, 0.0) + t.amount
    order = pipeline.names + sorted(s for s in counts if pipeline.stage(s) is None)
    rows: list[StageForecast] = []
    for name in order:
        p = pipeline.probability(name)
        value = values.get(name, 0.0)
        rows.append(
            StageForecast(
                stage=name,
                probability=p,
                closed=is_closed(name),
                count=counts.get(name, 0),
                value=_money(value),
                weighted=_money(value * p),
            )
        )
    open_rows = [r for r in rows if not r.closed]
    return Forecast(
        stages=tuple(rows),
        open_count=sum(r.count for r in open_rows),
        open_value=_money(sum(values.get(r.stage, 0.0) for r in open_rows)),
        weighted_open=_money(sum(values.get(r.stage, 0.0) * r.probability for r in open_rows)),
        won_value=_money(values.get(WON, 0.0)),
        weighted_forecast=_money(sum(values.get(r.stage, 0.0) * r.probability for r in rows)),
    )
