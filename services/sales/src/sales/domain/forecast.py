"""Pipeline value per stage and the weighted forecast.

``value`` of a stage is the sum of its opportunities' amounts (no amount counts
as 0); ``weighted`` is value x the stage's win probability. The weighted
forecast is the sum over every stage, so won deals count in full (probability
1.0 by default) and lost ones not at all; ``open_value`` and ``weighted_open``
are the same figures for the open stages only (the pipeline still to close).
Money is exact (``Decimal``, see ``crm_platform.money``): sums and products are
exact, and each figure is rounded half-even to the cent once, when shown.
Stages no longer in the pipeline (there should be none: a stage with open
opportunities cannot be removed) are reported after the configured ones with
probability 0.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from crm_platform.money import round_cents

from sales.domain.pipeline import WON, Pipeline, is_closed


@dataclass(frozen=True)
class StageTotal:
    stage: str
    count: int
    amount: Decimal


@dataclass(frozen=True)
class StageForecast:
    stage: str
    probability: float
    closed: bool
    count: int
    value: Decimal
    weighted: Decimal


@dataclass(frozen=True)
class Forecast:
    stages: tuple[StageForecast, ...]
    open_count: int
    open_value: Decimal
    weighted_open: Decimal
    won_value: Decimal
    weighted_forecast: Decimal


ZERO = Decimal(0)


def _exact(probability: float) -> Decimal:
    """The probability as configured (0.35 is 0.35, not the double nearest to it)."""
    return Decimal(repr(probability))


def forecast(pipeline: Pipeline, totals: Iterable[StageTotal]) -> Forecast:
    counts: dict[str, int] = {}
    values: dict[str, Decimal] = {}
    for t in totals:
        counts[t.stage] = counts.get(t.stage, 0) + t.count
        values[t.stage] = values.get(t.stage, ZERO) + t.amount
    order = pipeline.names + sorted(s for s in counts if pipeline.stage(s) is None)
    rows: list[StageForecast] = []
    weighted: dict[str, Decimal] = {}
    for name in order:
        p = pipeline.probability(name)
        value = values.get(name, ZERO)
        weighted[name] = value * _exact(p)
        rows.append(
            StageForecast(
                stage=name,
                probability=p,
                closed=is_closed(name),
                count=counts.get(name, 0),
                value=round_cents(value),
                weighted=round_cents(weighted[name]),
            )
        )
    open_rows = [r for r in rows if not r.closed]
    return Forecast(
        stages=tuple(rows),
        open_count=sum(r.count for r in open_rows),
        open_value=round_cents(sum((values.get(r.stage, ZERO) for r in open_rows), ZERO)),
        weighted_open=round_cents(sum((weighted[r.stage] for r in open_rows), ZERO)),
        won_value=round_cents(values.get(WON, ZERO)),
        weighted_forecast=round_cents(sum(weighted.values(), ZERO)),
    )
