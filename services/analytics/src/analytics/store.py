"""Analytics' own MongoDB collections: the latest snapshot of the figures and the latest reconciliation.

The Mongo implementations of ``analytics.repository``. One document each, replaced
atomically:

- ``snapshots``: ``{_id: "latest", updated_at, version, worker, funnel,
  channels: [{channel, stages}], handoffs, series}``; channels are stored as a list because
  channel names are free text (a name may hold a ``.``);
- ``reconciliations``: ``{_id: "latest", at, worker, scanned_events, repaired_facts,
  difference, seconds}``;
- ``kpis``: ``{_id: "latest", at, worker, records_version, kpis}`` (the KPI document of
  ``analytics.domain.kpis``; team and channel names are values, never keys of stored maps
  that MongoDB would have to accept: ``kpis`` is stored as a JSON string).
"""

from __future__ import annotations

import json
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from analytics.domain.snapshot import KpiReport, Reconciliation, Snapshot

SNAPSHOTS = "snapshots"
LATEST = "latest"
RECONCILIATIONS = "reconciliations"
KPIS = "kpis"

Doc = dict[str, Any]
Db = AsyncDatabase[Doc]


class MongoSnapshots:
    def __init__(self, db: Db) -> None:
        self.db = db

    async def latest(self) -> Snapshot | None:
        doc = await self.db[SNAPSHOTS].find_one({"_id": LATEST})
        return _snapshot_from_doc(doc) if doc else None

    async def save(self, snapshot: Snapshot) -> None:
        await self.db[SNAPSHOTS].replace_one({"_id": LATEST}, _snapshot_to_doc(snapshot), upsert=True)


class MongoReconciliations:
    def __init__(self, db: Db) -> None:
        self.db = db

    async def latest(self) -> Reconciliation | None:
        doc = await self.db[RECONCILIATIONS].find_one({"_id": LATEST})
        return _reconciliation_from_doc(doc) if doc else None

    async def save(self, reconciliation: Reconciliation) -> None:
        doc = _reconciliation_to_doc(reconciliation)
        await self.db[RECONCILIATIONS].replace_one({"_id": LATEST}, doc, upsert=True)


def _snapshot_to_doc(snapshot: Snapshot) -> Doc:
    return {
        "_id": LATEST,
        "updated_at": snapshot.updated_at,
        "version": snapshot.version,
        "worker": snapshot.worker,
        "funnel": snapshot.funnel,
        "channels": [{"channel": name, "stages": stages} for name, stages in snapshot.channels.items()],
        "handoffs": snapshot.handoffs,
        "series": snapshot.series,
    }


def _snapshot_from_doc(doc: Doc) -> Snapshot:
    return Snapshot(
        funnel=doc["funnel"],
        channels={c["channel"]: c["stages"] for c in doc.get("channels", [])},
        handoffs=doc["handoffs"],
        updated_at=doc.get("updated_at"),
        version=int(doc.get("version", 0)),
        worker=str(doc.get("worker", "")),
        series=doc.get("series") or {},
    )


def _reconciliation_to_doc(report: Reconciliation) -> Doc:
    return {
        "_id": LATEST,
        "at": report.at,
        "worker": report.worker,
        "scanned_events": report.scanned_events,
        "repaired_facts": report.repaired_facts,
        "difference": dict(report.difference),
        "seconds": round(report.seconds, 3),
    }


def _reconciliation_from_doc(doc: Doc) -> Reconciliation:
    return Reconciliation(
        at=doc["at"],
        scanned_events=int(doc.get("scanned_events", 0)),
        repaired_facts=int(doc.get("repaired_facts", 0)),
        difference={str(k): int(v) for k, v in doc.get("difference", {}).items()},
        seconds=float(doc.get("seconds", 0.0)),
        worker=str(doc.get("worker", "")),
    )


class MongoKpis:
    def __init__(self, db: Db) -> None:
        self.db = db

    async def latest(self) -> KpiReport | None:
        doc = await self.db[KPIS].find_one({"_id": LATEST})
        if not doc:
            return None
        return KpiReport(
            at=doc["at"],
            kpis=json.loads(doc["kpis"]),
            records_version=int(doc.get("records_version", 0)),
            worker=str(doc.get("worker", "")),
        )

    async def save(self, report: KpiReport) -> None:
        doc = {
            "_id": LATEST,
            "at": report.at,
            "worker": report.worker,
            "records_version": report.records_version,
            "kpis": json.dumps(report.kpis, separators=(",", ":")),
        }
        await self.db[KPIS].replace_one({"_id": LATEST}, doc, upsert=True)
