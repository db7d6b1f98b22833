"""The latest figures as published, and the latest reconciliation: what the API and ``/metrics`` read.

The worker writes a :class:`Snapshot` of its figures (about once a second, only when a
figure changed) and a :class:`Reconciliation` after each replay of the log; the read
API serves them, so neither depends on the worker's memory. Pure: no clock, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from analytics.domain.figures import DayLatency, Figures, FunnelSummary, HandoffSummary, Published
from analytics.domain.kpis import Json


@dataclass(frozen=True)
class Snapshot:
    funnel: FunnelSummary
    channels: dict[str, dict[str, int]]
    handoffs: dict[str, HandoffSummary]
    updated_at: datetime | None = None  # when the worker wrote it; None: nothing written yet
    version: int = 0  # the figures' version it shows (Figures.version)
    worker: str = ""  # the worker (faust app id) that wrote it
    # Per handoff and kind, each day's latency (the newest SERIES_DAYS days); {} in older snapshots.
    series: dict[str, dict[str, list[DayLatency]]] = field(default_factory=dict)

    @classmethod
    def of(cls, figures: Figures, *, worker: str, at: datetime) -> Snapshot:
        """The figures as published at ``at`` by ``worker``."""
        published = figures.summary()
        return cls(
            published["funnel"],
            published["channels"],
            published["handoffs"],
            updated_at=at,
            version=figures.version,
            worker=worker,
            series=published["series"],
        )

    @classmethod
    def empty(cls) -> Snapshot:
        """What is published before the worker wrote anything: every figure zero."""
        published = Figures().summary()
        return cls(published["funnel"], published["channels"], published["handoffs"])

    def shows(self, figures: Figures) -> bool:
        """True when this snapshot already shows ``figures`` (nothing new to write)."""
        return self.updated_at is not None and self.version == figures.version

    def published(self) -> Published:
        return Published(
            funnel=self.funnel, channels=self.channels, handoffs=self.handoffs, series=self.series
        )


@dataclass
class Reconciliation:
    """One replay of the log against the worker's facts (see ``analytics.reconcile``)."""

    at: datetime
    scanned_events: int
    repaired_facts: int
    difference: dict[str, int] = field(default_factory=dict)  # figure -> what the worker lacked
    seconds: float = 0.0
    worker: str = ""
    # The offsets replayed up to, per "topic[partition]" (logged, not stored).
    committed: dict[str, int] = field(default_factory=dict)

    @property
    def short(self) -> dict[str, int]:
        """The figures the worker was short of (the non-zero differences)."""
        return {figure: n for figure, n in self.difference.items() if n}


@dataclass(frozen=True)
class KpiReport:
    """The KPIs (``analytics.domain.kpis.compute``) as the worker computed them at ``at``."""

    at: datetime
    kpis: dict[str, Json]
    records_version: int = 0  # the records' version they were computed from
    worker: str = ""

    @classmethod
    def empty(cls, at: datetime) -> KpiReport:
        """What is served before the worker computed any: every figure empty."""
        from analytics.domain.kpis import compute

        return cls(at=at, kpis=compute({}, at))
