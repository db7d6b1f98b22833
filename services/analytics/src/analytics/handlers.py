"""Analytics' use cases over its repositories: publish the figures, read them back.

The stream logic itself is ``analytics.domain.engine`` (the faust worker folds each
event into the facts); these are the steps around it: the worker publishing a
snapshot of the figures and its reconciliation report, the API reading the latest
of each. Each is one single-document write or read through ``analytics.repository``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from analytics.domain import kpis
from analytics.domain.figures import Figures
from analytics.domain.records import Record
from analytics.domain.snapshot import KpiReport, Reconciliation, Snapshot
from analytics.repository import KpiRepository, ReconciliationRepository, SnapshotRepository


async def publish_snapshot(
    snapshots: SnapshotRepository, figures: Figures, *, worker: str, now: datetime, last: Snapshot | None
) -> Snapshot | None:
    """Write ``figures`` as the latest snapshot unless ``last`` (what this worker wrote) shows them.

    Returns the snapshot written, or None when there was nothing new.
    """
    if last is not None and last.shows(figures):
        return None
    snapshot = Snapshot.of(figures, worker=worker, at=now)
    await snapshots.save(snapshot)
    return snapshot


async def latest_snapshot(snapshots: SnapshotRepository) -> Snapshot:
    """The latest published figures; all zero before the worker wrote any."""
    return await snapshots.latest() or Snapshot.empty()


async def record_reconciliation(reconciliations: ReconciliationRepository, report: Reconciliation) -> None:
    await reconciliations.save(report)


async def latest_reconciliation(reconciliations: ReconciliationRepository) -> Reconciliation | None:
    return await reconciliations.latest()


async def publish_kpis(
    reports: KpiRepository,
    records: Mapping[str, Record] | kpis.Derived,
    *,
    records_version: int,
    worker: str,
    now: datetime,
) -> KpiReport:
    """Compute the KPIs at ``now`` and write them as the latest report.

    Always written, even when no record changed: overdue items, the latest periods and the
    business latencies' sliding windows move with time (an alert clears after a breach).
    """
    report = KpiReport(
        at=now, kpis=kpis.compute(records, now), records_version=records_version, worker=worker
    )
    await reports.save(report)
    return report


async def latest_kpis(reports: KpiRepository, now: datetime) -> KpiReport:
    """The latest KPI report; every figure empty before the worker computed one."""
    return await reports.latest() or KpiReport.empty(now)
