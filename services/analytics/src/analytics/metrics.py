"""``/metrics`` gauges read from the latest snapshot (a custom collector, refreshed on scrape).

- ``crm_analytics_funnel{stage}``: distinct leads/deals per funnel stage
- ``crm_analytics_channel_funnel{channel,stage}``: the same per source channel
- ``crm_analytics_handoff_latency_seconds{handoff,kind,quantile}``: p50/p95/p99 as
  quantile "0.5", "0.95", "0.99"; kind is ``transport`` or ``business``
- ``crm_analytics_handoff_latency_samples{handoff,kind}``: exact sample count
- ``crm_analytics_snapshot_timestamp_seconds``: when the worker wrote the snapshot
- ``crm_analytics_reconciliation_difference{figure}``: what the latest reconciliation found
  the worker short of, per figure (``funnel:<stage>``, ``transport_samples:<handoff>``,
  ``business_samples:<handoff>``), ``crm_analytics_reconciliation_repaired_facts`` and
  ``crm_analytics_reconciliation_timestamp_seconds`` (see ``analytics.reconcile``)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from prometheus_client.core import REGISTRY, GaugeMetricFamily, Metric
from pymongo.asynchronous.database import AsyncDatabase

from analytics import store

log = logging.getLogger("crm.analytics.metrics")

QUANTILE_LABELS: tuple[tuple[str, str], ...] = (("p50", "0.5"), ("p95", "0.95"), ("p99", "0.99"))


class SnapshotCache:
    """The latest snapshot as published figures; refreshed by API reads and scrapes."""

    def __init__(self, db: Callable[[], AsyncDatabase[dict[str, Any]]], timeout: float = 2.0) -> None:
        self._db = db
        self.timeout = timeout
        self.summary: dict[str, Any] | None = None
        self.reconciliation: dict[str, Any] | None = None

    async def refresh(self) -> dict[str, Any]:
        doc = await asyncio.wait_for(store.read_snapshot(self._db()), timeout=self.timeout)
        self.summary = store.summary_from_document(doc)
        return self.summary

    async def refresh_reconciliation(self) -> dict[str, Any] | None:
        self.reconciliation = await asyncio.wait_for(
            store.read_reconciliation(self._db()), timeout=self.timeout
        )
        return self.reconciliation

    async def refresh_quietly(self) -> None:
        try:
            await self.refresh()
            await self.refresh_reconciliation()
        except Exception as exc:  # keep serving the last figures we had
            log.warning("cannot refresh the analytics snapshot for /metrics: %s", exc)


class AnalyticsCollector:
    """Exports the figures of ``source`` (the most recently created app's cache)."""

    def __init__(self) -> None:
        self.source: SnapshotCache | None = None

    def describe(self) -> list[Metric]:
        return []  # nothing to describe before the first snapshot is read

    def collect(self) -> Iterator[Metric]:
        if self.source is not None and self.source.reconciliation is not None:
            yield from reconciliation_metrics(self.source.reconciliation)
        summary = self.source.summary if self.source is not None else None
        if summary is None:
            return
        funnel = GaugeMetricFamily(
            "crm_analytics_funnel",
            "Distinct leads/deals that reached each funnel stage",
            labels=["stage"],
        )
        for stage, count in summary["funnel"]["stages"].items():
            funnel.add_metric([stage], count)
        yield funnel

        channels = GaugeMetricFamily(
            "crm_analytics_channel_funnel",
            "Funnel stage counts per source channel",
            labels=["channel", "stage"],
        )
        for channel, stages in summary["channels"].items():
            for stage, count in stages.items():
                channels.add_metric([channel, stage], count)
        yield channels

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
        for handoff, kinds in summary["handoffs"].items():
            for kind, stats in kinds.items():
                if stats is None:
                    continue
                samples.add_metric([handoff, kind], stats["count"])
                for key, quantile in QUANTILE_LABELS:
                    if stats.get(key) is not None:
                        latency.add_metric([handoff, kind, quantile], stats[key])
        yield latency
        yield samples

        updated = summary.get("updated_at")
        if isinstance(updated, datetime):
            stamp = GaugeMetricFamily(
                "crm_analytics_snapshot_timestamp_seconds",
                "When the analytics worker wrote the snapshot (unix time)",
            )
            stamp.add_metric([], updated.timestamp())
            yield stamp


def reconciliation_metrics(report: dict[str, Any]) -> Iterator[Metric]:
    """The latest reconciliation: what the worker lacked per figure, and when it was checked."""
    difference = GaugeMetricFamily(
        "crm_analytics_reconciliation_difference",
        "Replay of the log minus the worker's figure, found (and repaired) by the latest reconciliation",
        labels=["figure"],
    )
    for figure, value in sorted(report.get("difference", {}).items()):
        difference.add_metric([figure], value)
    yield difference
    repaired = GaugeMetricFamily(
        "crm_analytics_reconciliation_repaired_facts",
        "Facts the latest reconciliation added to the worker's tables",
    )
    repaired.add_metric([], report.get("repaired_facts", 0))
    yield repaired
    at = report.get("at")
    if isinstance(at, datetime):
        stamp = GaugeMetricFamily(
            "crm_analytics_reconciliation_timestamp_seconds",
            "When the latest reconciliation of the worker's figures against the log finished (unix time)",
        )
        stamp.add_metric([], at.timestamp())
        yield stamp


COLLECTOR = AnalyticsCollector()
REGISTRY.register(COLLECTOR)  # once per process: this module is imported once
