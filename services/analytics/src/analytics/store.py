"""Analytics' own MongoDB collection: the latest snapshot of the figures.

The faust worker writes it (about once a second, only when a figure changed);
the API and ``/metrics`` read it, so neither depends on the worker's memory.
One document, replaced atomically: ``{_id: "latest", updated_at, version,
worker, funnel, channels: [{channel, stages}], handoffs}``. Channels are stored
as a list because channel names are free text (a name may hold a ``.``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from analytics.domain.figures import Figures

SNAPSHOTS = "snapshots"
LATEST = "latest"
# The latest reconciliation of the worker's facts against the log (analytics.reconcile).
RECONCILIATIONS = "reconciliations"

Doc = dict[str, Any]


def snapshot_document(summary: dict[str, Any], *, version: int, worker: str, updated_at: datetime) -> Doc:
    return {
        "_id": LATEST,
        "updated_at": updated_at,
        "version": version,
        "worker": worker,
        "funnel": summary["funnel"],
        "channels": [{"channel": name, "stages": stages} for name, stages in summary["channels"].items()],
        "handoffs": summary["handoffs"],
    }


def summary_from_document(doc: Doc | None) -> dict[str, Any]:
    """The published figures from a snapshot document; empty figures when there is none."""
    if not doc:
        return {**Figures().summary(), "updated_at": None}
    return {
        "funnel": doc["funnel"],
        "channels": {c["channel"]: c["stages"] for c in doc.get("channels", [])},
        "handoffs": doc["handoffs"],
        "updated_at": doc.get("updated_at"),
    }


async def write_snapshot(db: AsyncDatabase[Doc], doc: Doc) -> None:
    await db[SNAPSHOTS].replace_one({"_id": doc["_id"]}, doc, upsert=True)


async def read_snapshot(db: AsyncDatabase[Doc]) -> Doc | None:
    return await db[SNAPSHOTS].find_one({"_id": LATEST})


async def write_reconciliation(db: AsyncDatabase[Doc], report: Doc) -> None:
    await db[RECONCILIATIONS].replace_one({"_id": LATEST}, {"_id": LATEST, **report}, upsert=True)


async def read_reconciliation(db: AsyncDatabase[Doc]) -> Doc | None:
    return await db[RECONCILIATIONS].find_one({"_id": LATEST})
