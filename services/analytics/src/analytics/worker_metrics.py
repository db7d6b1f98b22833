"""What the faust worker exports on its own HTTP port (``GET /metrics`` on faust's web server).

The worker is a separate process from the analytics API, so what it does is only
visible if it serves metrics itself (a PodMonitor scrapes port ``worker-web``):

- ``crm_events_consumed_total{service="analytics-worker",topic,event_type,outcome}``:
  outcome ``processed``, ``dead_lettered``, ``skipped`` (a type analytics does not read,
  ``analytics.domain.reads``) or ``ignored`` (a dead letter replayed for another group) (the
  platform's counter, so the same dashboards and alerts cover the worker);
- ``crm_dead_lettered_total{service="analytics-worker",topic,reason}``;
- ``crm_consumer_lag{service="analytics-worker",topic,partition}``: from the group's
  committed offsets and the high watermarks, per source partition the worker holds
  (``crm_platform.liveness``; faust's rebalance signals feed the partition tracker, so
  a revoked partition's series is dropped);
- ``crm_analytics_snapshot_age_seconds``: how long the MongoDB snapshot the API serves
  has been behind the worker's figures (0 right after a write or when nothing changed;
  grows from process start until the first snapshot after recovery). Alert
  ``CrmAnalyticsSnapshotStale``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import faust
from crm_platform import metrics
from crm_platform.liveness import PartitionTracker
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest

SNAPSHOT_AGE = Gauge(
    "crm_analytics_snapshot_age_seconds",
    "Seconds since the analytics worker's MongoDB snapshot last matched its figures",
)
# aiohttp refuses a charset inside content_type; Prometheus needs only the version.
_CONTENT_TYPE = CONTENT_TYPE_LATEST.split(";")[0] + "; version=0.0.4"


class WorkerMetrics:
    """The worker's counters and its snapshot freshness, labelled as one service."""

    def __init__(self, service: str) -> None:
        self.service = service
        # The labelled counters by (topic, event type, outcome): one dict lookup per event
        # instead of prometheus_client's label resolution.
        self._consumed: dict[tuple[str, str, str], Any] = {}
        self._fresh_at = time.monotonic()  # not fresh until the first snapshot after recovery
        SNAPSHOT_AGE.set_function(lambda: time.monotonic() - self._fresh_at)

    def consumed(self, topic: str, event_type: str | None, outcome: str) -> None:
        self._counter((topic, event_type or "unknown", outcome)).inc()

    def consumed_many(self, counts: dict[tuple[str, str, str], int]) -> None:
        """Several records' outcomes at once, by (topic, event type, outcome): one increment
        per key (a fetched batch's chunk, analytics.worker: one per record was 3% of a replay)."""
        for key, n in counts.items():
            self._counter(key).inc(n)

    def _counter(self, key: tuple[str, str, str]) -> Any:
        """The labelled counter of (topic, event type, outcome), resolved once."""
        counter = self._consumed.get(key)
        if counter is None:
            counter = self._consumed[key] = metrics.EVENTS_CONSUMED.labels(self.service, *key)
        return counter

    def dead_lettered(self, topic: str, reason: str) -> None:
        metrics.DEAD_LETTERED.labels(self.service, topic, reason).inc()

    def snapshot_current(self) -> None:
        """The snapshot now holds the worker's figures (just written, or nothing changed)."""
        self._fresh_at = time.monotonic()


def serve_metrics(app: faust.App) -> None:
    """``GET /metrics`` on faust's web server (enabled by ``CRM_ANALYTICS_WORKER_WEB_PORT``)."""

    @app.page("/metrics")
    async def prometheus(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        return web.bytes(generate_latest(), content_type=_CONTENT_TYPE)


def track_partitions(app: faust.App, tracker: PartitionTracker, topics: Iterable[str]) -> None:
    """Feed faust's rebalances to the watchdog's tracker (source topics only, not changelogs)."""
    sources = frozenset(topics)

    # faust's signals call receiver(sender, <the partitions>, signal=...).
    async def assigned(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        await tracker.on_partitions_assigned([tp for tp in args[0] if tp.topic in sources])

    async def revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        await tracker.on_partitions_revoked([tp for tp in args[0] if tp.topic in sources])

    app.on_partitions_assigned.connect(assigned)
    app.on_partitions_revoked.connect(revoked)
