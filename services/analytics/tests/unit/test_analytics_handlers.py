"""Every analytics handler and the /metrics cache against the in-memory fakes: no broker, no database."""

from __future__ import annotations

from datetime import UTC, datetime

from analytics import handlers
from analytics.domain.engine import AnalyticsState, apply
from analytics.domain.figures import Figures
from analytics.domain.snapshot import Reconciliation, Snapshot
from analytics.fakes import InMemoryReconciliations, InMemorySnapshots
from analytics.metrics import AnalyticsCollector, SnapshotCache
from crm_contracts import decode

AT = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def figures_after_one_capture(journey) -> Figures:
    state = AnalyticsState()
    env = journey.captured("lead-1", "web", when=0)
    apply(state, env, decode(env))
    return state.figures


async def test_before_any_snapshot_the_published_figures_are_zero() -> None:
    snapshot = await handlers.latest_snapshot(InMemorySnapshots())
    assert snapshot.updated_at is None
    assert set(snapshot.funnel["stages"].values()) == {0}
    assert snapshot.channels == {}
    assert snapshot.handoffs["lead-qualified"]["transport"]["count"] == 0


async def test_a_snapshot_is_written_once_per_figures_version(journey) -> None:
    snapshots = InMemorySnapshots()
    figures = figures_after_one_capture(journey)
    written = await handlers.publish_snapshot(snapshots, figures, worker="w1", now=AT, last=None)
    assert written is not None
    assert written.version == figures.version
    assert written.worker == "w1"
    again = await handlers.publish_snapshot(snapshots, figures, worker="w1", now=AT, last=written)
    assert again is None, "the figures did not change: nothing written"
    assert snapshots.saves == 1
    latest = await handlers.latest_snapshot(snapshots)
    assert latest.funnel["stages"]["captured"] == 1
    assert latest.channels["web"]["captured"] == 1
    assert latest.updated_at == AT


async def test_changed_figures_are_written_again(journey) -> None:
    snapshots = InMemorySnapshots()
    first = await handlers.publish_snapshot(snapshots, Figures(), worker="w1", now=AT, last=None)
    figures = figures_after_one_capture(journey)
    second = await handlers.publish_snapshot(snapshots, figures, worker="w1", now=AT, last=first)
    assert second is not None
    assert snapshots.saves == 2


async def test_the_latest_reconciliation_is_what_was_recorded() -> None:
    reconciliations = InMemoryReconciliations()
    assert await handlers.latest_reconciliation(reconciliations) is None
    report = Reconciliation(at=AT, scanned_events=10, repaired_facts=2, difference={"funnel:captured": 2})
    await handlers.record_reconciliation(reconciliations, report)
    latest = await handlers.latest_reconciliation(reconciliations)
    assert latest == report
    assert latest is not None
    assert latest.short == {"funnel:captured": 2}


async def test_the_metrics_cache_keeps_the_last_figures_when_the_store_fails(journey) -> None:
    snapshots = InMemorySnapshots(Snapshot.of(figures_after_one_capture(journey), worker="w1", at=AT))
    cache = SnapshotCache(snapshots, InMemoryReconciliations())
    await cache.refresh_quietly()
    assert cache.snapshot is not None
    snapshots.fail = TimeoutError("database unreachable")
    await cache.refresh_quietly()  # logs, does not raise
    assert cache.snapshot is not None
    assert cache.snapshot.funnel["stages"]["captured"] == 1


async def test_the_collector_exports_the_cached_snapshot_and_reconciliation(journey) -> None:
    snapshot = Snapshot.of(figures_after_one_capture(journey), worker="w1", at=AT)
    report = Reconciliation(at=AT, scanned_events=1, repaired_facts=0, difference={"funnel:captured": 0})
    cache = SnapshotCache(InMemorySnapshots(snapshot), InMemoryReconciliations(report))
    collector = AnalyticsCollector()
    assert list(collector.collect()) == [], "nothing before a cache is attached"
    collector.source = cache
    await cache.refresh_quietly()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for m in collector.collect() for s in m.samples
    }
    assert samples[("crm_analytics_funnel", (("stage", "captured"),))] == 1
    assert samples[("crm_analytics_channel_funnel", (("channel", "web"), ("stage", "captured")))] == 1
    assert samples[("crm_analytics_snapshot_timestamp_seconds", ())] == AT.timestamp()
    assert samples[("crm_analytics_reconciliation_difference", (("figure", "funnel:captured"),))] == 0
    assert (
        samples[
            ("crm_analytics_handoff_latency_samples", (("handoff", "lead-qualified"), ("kind", "transport")))
        ]
        == 0
    )
