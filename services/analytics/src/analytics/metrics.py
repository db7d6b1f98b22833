"""``/metrics`` gauges read from the latest snapshot (a custom collector, refreshed on scrape).

- ``crm_analytics_funnel{stage}``: distinct leads/deals per funnel stage
- ``crm_analytics_channel_funnel{channel,stage}``: the same per source channel
- ``crm_analytics_handoff_latency_seconds{handoff,kind,quantile}``: p50/p95/p99 as
  quantile "0.5", "0.95", "0.99"; kind is ``transport`` or ``business``
- ``crm_analytics_handoff_latency_samples{handoff,kind}``: exact sample count
- ``crm_analytics_snapshot_timestamp_seconds``: when the worker wrote the snapshot
- ``crm_analytics_business_latency_window_seconds{handoff,window,quantile}``: handed off -> the
  receiver's first human step over the sliding windows ``last_hour``, ``last_day``,
  ``last_30_days`` (items still waiting count by their age), quantiles "0.5", "0.9", "0.99";
  ``crm_analytics_business_latency_pending{handoff}`` and
  ``crm_analytics_business_latency_oldest_pending_seconds{handoff}``
- ``crm_analytics_action_items{department,state}``: open, overdue and escalated items now
- ``crm_analytics_kpi{kpi,team}``: the current month's KPIs (see ``analytics.domain.kpis``)
- ``crm_analytics_reconciliation_difference{figure}``: what the latest reconciliation found
  the worker short of, per figure (``funnel:<stage>``, ``transport_samples:<handoff>``,
  ``business_samples:<handoff>``), ``crm_analytics_reconciliation_repaired_facts`` and
  ``crm_analytics_reconciliation_timestamp_seconds`` (see ``analytics.reconcile``)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from datetime import datetime

from prometheus_client.core import REGISTRY, GaugeMetricFamily, Metric

from analytics import handlers
from analytics.domain.kpis import Json
from analytics.domain.snapshot import KpiReport, Reconciliation, Snapshot
from analytics.repository import KpiRepository, ReconciliationRepository, SnapshotRepository

log = logging.getLogger("crm.analytics.metrics")


class SnapshotCache:
    """The latest snapshot as published figures; refreshed by API reads and scrapes."""

    def __init__(
        self,
        snapshots: SnapshotRepository,
        reconciliations: ReconciliationRepository,
        timeout: float = 2.0,
        kpi_reports: KpiRepository | None = None,
    ) -> None:
        self.snapshots = snapshots
        self.kpi_reports = kpi_reports
        self.kpis: KpiReport | None = None
        self.reconciliations = reconciliations
        self.timeout = timeout
        self.snapshot: Snapshot | None = None
        self.reconciliation: Reconciliation | None = None

    async def refresh(self) -> Snapshot:
        self.snapshot = await asyncio.wait_for(handlers.latest_snapshot(self.snapshots), timeout=self.timeout)
        return self.snapshot

    async def refresh_reconciliation(self) -> Reconciliation | None:
        self.reconciliation = await asyncio.wait_for(
            handlers.latest_reconciliation(self.reconciliations), timeout=self.timeout
        )
        return self.reconciliation

    async def refresh_quietly(self) -> None:
        try:
            await self.refresh()
            await self.refresh_reconciliation()
            if self.kpi_reports is not None:
                self.kpis = await asyncio.wait_for(self.kpi_reports.latest(), timeout=self.timeout)
        except Exception as exc:  # noqa: BLE001 - a scrape never fails: keep the last figures we had
            log.warning("cannot refresh the analytics snapshot for /metrics: %s", exc)


class AnalyticsCollector:
    """Exports the figures of ``source`` (the most recently created app's cache)."""

    def __init__(self) -> None:
        self.source: SnapshotCache | None = None

    def describe(self) -> list[Metric]:
        return []  # nothing to describe before the first snapshot is read

    def collect(self) -> Iterator[Metric]:
        if self.source is None:
            return
        if self.source.reconciliation is not None:
            yield from reconciliation_metrics(self.source.reconciliation)
        if self.source.snapshot is not None:
            yield from snapshot_metrics(self.source.snapshot)
        if self.source.kpis is not None:
            yield from kpi_metrics(self.source.kpis.kpis)


def snapshot_metrics(snapshot: Snapshot) -> Iterator[Metric]:
    funnel = GaugeMetricFamily(
        "crm_analytics_funnel",
        "Distinct leads/deals that reached each funnel stage",
        labels=["stage"],
    )
    for stage, count in snapshot.funnel["stages"].items():
        funnel.add_metric([stage], count)
    yield funnel

    channels = GaugeMetricFamily(
        "crm_analytics_channel_funnel",
        "Funnel stage counts per source channel",
        labels=["channel", "stage"],
    )
    for channel, stages in snapshot.channels.items():
        for stage, count in stages.items():
            channels.add_metric([channel, stage], count)
    yield channels
    yield from latency_metrics(snapshot)
    if snapshot.updated_at is not None:
        yield _timestamp(
            "crm_analytics_snapshot_timestamp_seconds",
            "When the analytics worker wrote the snapshot (unix time)",
            snapshot.updated_at,
        )


def latency_metrics(snapshot: Snapshot) -> Iterator[Metric]:
    latency = GaugeMetricFamily(
        "crm_analytics_handoff_latency_seconds",
        "Handoff latency percentiles (transport: occurred -> stored by the receiver; "
        "business: handed off -> first action by the receiver)",
        labels=["handoff", "kind", "quantile"],
    )
    samples = GaugeMetricFamily(
        "crm_analytics_handoff_latency_samples",
        "Latency samples behind the percentiles",
        labels=["handoff", "kind"],
    )
    for handoff, kinds in snapshot.handoffs.items():
        for kind, stats in (("transport", kinds["transport"]), ("business", kinds["business"])):
            if stats is None:
                continue
            samples.add_metric([handoff, kind], stats["count"])
            for value, quantile in ((stats["p50"], "0.5"), (stats["p95"], "0.95"), (stats["p99"], "0.99")):
                if value is not None:
                    latency.add_metric([handoff, kind, quantile], value)
    yield latency
    yield samples


def _dict(value: Json) -> dict[str, Json]:
    return value if isinstance(value, dict) else {}


def _number(value: Json) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def kpi_metrics(kpis: dict[str, Json]) -> Iterator[Metric]:
    """The KPI report's business latency windows, open items and the current month's KPIs."""
    yield from business_window_metrics(_dict(kpis.get("business_latency")))
    items = GaugeMetricFamily(
        "crm_analytics_action_items",
        "Action items now, per owning department",
        labels=["department", "state"],
    )
    for department, counts in _dict(kpis.get("action_items")).items():
        for state, count in _dict(counts).items():
            if (n := _number(count)) is not None:
                items.add_metric([department, state], n)
    yield items
    yield current_month_metrics(kpis)


def business_window_metrics(latency: dict[str, Json]) -> Iterator[Metric]:
    window = GaugeMetricFamily(
        "crm_analytics_business_latency_window_seconds",
        "Handed off -> the receiver's first human step, over a sliding window (waiting items by their age)",
        labels=["handoff", "window", "quantile"],
    )
    pending = GaugeMetricFamily(
        "crm_analytics_business_latency_pending", "Handoffs not acted on yet", labels=["handoff"]
    )
    oldest = GaugeMetricFamily(
        "crm_analytics_business_latency_oldest_pending_seconds",
        "Age of the oldest handoff not acted on yet",
        labels=["handoff"],
    )
    for handoff, figures in latency.items():
        body = _dict(figures)
        for name, stats in _dict(body.get("windows")).items():
            for key, quantile in (("p50", "0.5"), ("p90", "0.9"), ("p99", "0.99")):
                if (value := _number(_dict(stats).get(key))) is not None:
                    window.add_metric([handoff, name, quantile], value)
        pending.add_metric([handoff], _number(body.get("pending")) or 0.0)
        if (age := _number(body.get("oldest_pending_seconds"))) is not None:
            oldest.add_metric([handoff], age)
    yield window
    yield pending
    yield oldest


CURRENT_MONTH_KPIS: tuple[tuple[str, str, str], ...] = (
    ("tickets", "resolution_rate", "resolution_rate"),
    ("tickets", "sla_attainment", "sla_attainment"),
    ("csat", "average", "csat_average"),
    ("nps", "score", "nps"),
    ("renewals", "renewal_rate", "renewal_rate"),
    ("renewals", "logo_churn", "logo_churn"),
    ("checkins", "coverage", "checkin_coverage"),
)


def current_month_metrics(kpis: dict[str, Json]) -> Metric:
    gauge = GaugeMetricFamily(
        "crm_analytics_kpi",
        "The current month's KPIs per team (absent while undefined)",
        labels=["kpi", "team"],
    )
    months = _dict(kpis.get("periods")).get("month")
    current = months[0] if isinstance(months, list) and months else None
    for team, figures in _dict(_dict(current).get("teams")).items():
        for group, key, name in CURRENT_MONTH_KPIS:
            if (value := _number(_dict(_dict(figures).get(group)).get(key))) is not None:
                gauge.add_metric([name, team], value)
    return gauge


def reconciliation_metrics(report: Reconciliation) -> Iterator[Metric]:
    """The latest reconciliation: what the worker lacked per figure, and when it was checked."""
    difference = GaugeMetricFamily(
        "crm_analytics_reconciliation_difference",
        "Replay of the log minus the worker's figure, found (and repaired) by the latest reconciliation",
        labels=["figure"],
    )
    for figure, value in sorted(report.difference.items()):
        difference.add_metric([figure], value)
    yield difference
    repaired = GaugeMetricFamily(
        "crm_analytics_reconciliation_repaired_facts",
        "Facts the latest reconciliation added to the worker's tables",
    )
    repaired.add_metric([], report.repaired_facts)
    yield repaired
    yield _timestamp(
        "crm_analytics_reconciliation_timestamp_seconds",
        "When the latest reconciliation of the worker's figures against the log finished (unix time)",
        report.at,
    )


def _timestamp(name: str, documentation: str, at: datetime) -> Metric:
    stamp = GaugeMetricFamily(name, documentation)
    stamp.add_metric([], at.timestamp())
    return stamp


COLLECTOR = AnalyticsCollector()
REGISTRY.register(COLLECTOR)  # once per process: this module is imported once
