"""Sales' own collections (database ``sales``) and the repository functions over them.

Collections:
- ``reps``           the rep roster: ``_id`` = user id (the token's ``sub``), ``name`` (display), ``active``
- ``counters``       ``{_id: "round_robin", value}``: the assignment counter
- ``config``         ``{_id: "sales", lead_response_sla_minutes}``
- ``pipeline``       ``{_id: "current", version, stages: [...]}``
- ``inbox``          one item per ``lead.qualified`` handoff (``_id`` = its event id)
- ``opportunities``  opportunities and, once won, deals (``_id`` = the deal id)
- ``activities``     calls, visits, emails, quotes logged against an opportunity

Functions taking a :class:`Tx` read and write inside the caller's transaction
(always with ``session=tx.session``); the others are plain reads for the API.
"""

from __future__ import annotations

import logging
from datetime import datetime
from decimal import Decimal
from typing import Any

from crm_contracts import utcnow
from crm_platform.money import to_amount
from crm_platform.mongo import Tx
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from sales.domain.forecast import StageTotal
from sales.domain.inbox import DEFAULT_SLA_MINUTES
from sales.domain.pipeline import DEFAULT_PIPELINE, Pipeline, Stage

log = logging.getLogger("crm.sales.store")

Doc = dict[str, Any]
Db = AsyncDatabase[Doc]

REPS = "reps"
COUNTERS = "counters"
CONFIG = "config"
PIPELINE = "pipeline"
INBOX = "inbox"
OPPORTUNITIES = "opportunities"
ACTIVITIES = "activities"

ROUND_ROBIN = "round_robin"
CONFIG_ID = "sales"
PIPELINE_ID = "current"


async def ensure_indexes(db: Db, *, default_sla_minutes: int = DEFAULT_SLA_MINUTES) -> None:
    """Indexes, and the seed documents (counter, config, default pipeline) if absent."""
    await db[REPS].create_index("active", name="active")
    await db[INBOX].create_index([("lead_id", ASCENDING), ("received_at", DESCENDING)], name="by_lead")
    await db[INBOX].create_index(
        [("owner", ASCENDING), ("status", ASCENDING), ("received_at", DESCENDING)], name="by_owner"
    )
    await db[INBOX].create_index(
        [("status", ASCENDING), ("response_due_at", ASCENDING)], name="by_status_due"
    )
    await db[OPPORTUNITIES].create_index([("owner", ASCENDING), ("created_at", DESCENDING)], name="by_owner")
    await db[OPPORTUNITIES].create_index([("stage", ASCENDING), ("owner", ASCENDING)], name="by_stage")
    await db[OPPORTUNITIES].create_index("lead_id", name="by_lead")
    # One opportunity per inbox item and per service-desk signal, whatever redelivers them.
    await db[OPPORTUNITIES].create_index(
        "inbox_item_id",
        unique=True,
        name="inbox_item_unique",
        partialFilterExpression={"inbox_item_id": {"$type": "string"}},
    )
    await db[OPPORTUNITIES].create_index(
        "signal_id",
        unique=True,
        name="signal_unique",
        partialFilterExpression={"signal_id": {"$type": "string"}},
    )
    await db[ACTIVITIES].create_index(
        [("opportunity_id", ASCENDING), ("occurred_at", DESCENDING)], name="by_opportunity"
    )
    now = utcnow()
    seeds: list[tuple[str, str, Doc]] = [
        (COUNTERS, ROUND_ROBIN, {"value": 0}),
        (
            CONFIG,
            CONFIG_ID,
            {"lead_response_sla_minutes": default_sla_minutes, "updated_at": now, "updated_by": None},
        ),
        (PIPELINE, PIPELINE_ID, {**pipeline_to_doc(DEFAULT_PIPELINE), "updated_at": now, "updated_by": None}),
    ]
    for collection, _id, doc in seeds:
        try:
            await db[collection].update_one({"_id": _id}, {"$setOnInsert": doc}, upsert=True)
        except DuplicateKeyError:
            pass  # another replica seeded it at the same moment


# -- reps and the round-robin counter ------------------------------------------------------


async def list_reps(db: Db) -> list[Doc]:
    return await db[REPS].find({}).sort("_id", ASCENDING).to_list()


async def active_rep_names(tx: Tx) -> list[str]:
    docs = await tx.db[REPS].find({"active": True}, {"_id": 1}, session=tx.session).to_list()
    return [str(d["_id"]) for d in docs]


async def replace_reps(tx: Tx, reps: list[Doc]) -> None:
    await tx.db[REPS].delete_many({}, session=tx.session)
    if reps:
        await tx.db[REPS].insert_many(reps, session=tx.session)


async def upsert_rep(tx: Tx, rep: Doc) -> Doc:
    """Add or change one rep; a ``name`` of None keeps the display name already stored."""
    fields = {k: v for k, v in rep.items() if k != "_id" and not (k == "name" and v is None)}
    doc: Doc | None = await tx.db[REPS].find_one_and_update(
        {"_id": rep["_id"]},
        {"$set": fields},
        upsert=True,
        return_document=ReturnDocument.AFTER,
        session=tx.session,
    )
    assert doc is not None  # upsert with ReturnDocument.AFTER always returns the document
    return doc


async def take_counter(tx: Tx) -> int:
    """The next position in the rotation: the counter's value, incremented atomically.

    The increment is its own single-document write, outside ``tx``: every caller
    gets a distinct value, and the transactions that assign owners never write a
    shared document, so handoffs handled side by side do not abort each other with
    write conflicts. A transaction that is retried or never commits leaves its
    value unused: the rotation skips one position, nobody gets two leads at once.
    """
    doc = await tx.db[COUNTERS].find_one_and_update(
        {"_id": ROUND_ROBIN},
        {"$inc": {"value": 1}},
        upsert=True,
        return_document=ReturnDocument.BEFORE,
    )
    return int(doc["value"]) if doc else 0


async def peek_counter(db: Db) -> int:
    doc = await db[COUNTERS].find_one({"_id": ROUND_ROBIN})
    return int(doc["value"]) if doc else 0


# -- config and pipeline -------------------------------------------------------------------


async def get_config(db: Db) -> Doc:
    doc = await db[CONFIG].find_one({"_id": CONFIG_ID})
    return doc or {"lead_response_sla_minutes": DEFAULT_SLA_MINUTES, "updated_at": None, "updated_by": None}


async def sla_minutes(tx: Tx) -> int:
    doc = await tx.db[CONFIG].find_one({"_id": CONFIG_ID}, session=tx.session)
    return int(doc["lead_response_sla_minutes"]) if doc else DEFAULT_SLA_MINUTES


async def save_config(tx: Tx, sla: int, by: str, now: datetime) -> None:
    await tx.db[CONFIG].update_one(
        {"_id": CONFIG_ID},
        {"$set": {"lead_response_sla_minutes": sla, "updated_at": now, "updated_by": by}},
        upsert=True,
        session=tx.session,
    )


def pipeline_to_doc(p: Pipeline) -> Doc:
    return {
        "version": p.version,
        "stages": [
            {"name": s.name, "probability": s.probability, "required_fields": list(s.required_fields)}
            for s in p.stages
        ],
    }


def pipeline_from_doc(d: Doc | None) -> Pipeline:
    if not d:
        return DEFAULT_PIPELINE
    return Pipeline(
        tuple(
            Stage(s["name"], float(s["probability"]), tuple(s.get("required_fields", ())))
            for s in d["stages"]
        ),
        int(d.get("version", 1)),
    )


async def get_pipeline_doc(db: Db) -> Doc:
    doc = await db[PIPELINE].find_one({"_id": PIPELINE_ID})
    return doc or {**pipeline_to_doc(DEFAULT_PIPELINE), "updated_at": None, "updated_by": None}


async def get_pipeline(db: Db) -> Pipeline:
    return pipeline_from_doc(await db[PIPELINE].find_one({"_id": PIPELINE_ID}))


async def load_pipeline(tx: Tx) -> Pipeline:
    return pipeline_from_doc(await tx.db[PIPELINE].find_one({"_id": PIPELINE_ID}, session=tx.session))


async def save_pipeline(tx: Tx, p: Pipeline, by: str, now: datetime) -> None:
    await tx.db[PIPELINE].replace_one(
        {"_id": PIPELINE_ID},
        {**pipeline_to_doc(p), "updated_at": now, "updated_by": by},
        upsert=True,
        session=tx.session,
    )


async def count_in_stages(tx: Tx, stages: list[str]) -> dict[str, int]:
    rows = await (
        await tx.db[OPPORTUNITIES].aggregate(
            [{"$match": {"stage": {"$in": stages}}}, {"$group": {"_id": "$stage", "n": {"$sum": 1}}}],
            session=tx.session,
        )
    ).to_list()
    return {str(r["_id"]): int(r["n"]) for r in rows}


# -- inbox ---------------------------------------------------------------------------------


async def pending_item_for_lead(tx: Tx, lead_id: str) -> Doc | None:
    return await tx.db[INBOX].find_one({"lead_id": lead_id, "status": "pending"}, session=tx.session)


async def count_items_for_lead(tx: Tx, lead_id: str) -> int:
    return await tx.db[INBOX].count_documents({"lead_id": lead_id}, session=tx.session)


async def insert_item(tx: Tx, item: Doc) -> None:
    await tx.db[INBOX].insert_one(item, session=tx.session)


async def load_latest_item(tx: Tx, lead_id: str) -> Doc | None:
    """The lead's current inbox item: its most recent handoff."""
    return await tx.db[INBOX].find_one(
        {"lead_id": lead_id},
        sort=[("received_at", DESCENDING), ("_id", DESCENDING)],
        session=tx.session,
    )


async def get_latest_item(db: Db, lead_id: str) -> Doc | None:
    return await db[INBOX].find_one(
        {"lead_id": lead_id}, sort=[("received_at", DESCENDING), ("_id", DESCENDING)]
    )


async def update_item(tx: Tx, item_id: str, expected_status: str, changes: Doc) -> Doc:
    doc = await tx.db[INBOX].find_one_and_update(
        {"_id": item_id, "status": expected_status},
        changes,
        return_document=ReturnDocument.AFTER,
        session=tx.session,
    )
    if doc is None:  # pragma: no cover - the transaction's snapshot makes this unreachable
        raise RuntimeError(f"inbox item {item_id} changed under the transaction")
    return doc


async def list_inbox(
    db: Db,
    *,
    owner: str | None,
    status: str | None,
    overdue: bool | None,
    unassigned: bool,
    now: datetime,
    limit: int,
    offset: int,
) -> tuple[list[Doc], int]:
    query: Doc = {}
    if unassigned:
        query["owner"] = None
    elif owner is not None:
        query["owner"] = owner
    if status is not None:
        query["status"] = status
    if overdue is True:
        query["status"] = "pending"
        query["response_due_at"] = {"$lt": now}
        if status not in (None, "pending"):
            return [], 0
    elif overdue is False:
        query["$or"] = [{"status": {"$ne": "pending"}}, {"response_due_at": {"$gte": now}}]
    total = await db[INBOX].count_documents(query)
    docs = await (
        db[INBOX]
        .find(query)
        .sort([("received_at", DESCENDING), ("_id", DESCENDING)])
        .skip(offset)
        .limit(limit)
    ).to_list()
    return docs, total


# -- opportunities and activities ----------------------------------------------------------


async def insert_opportunity(tx: Tx, opp: Doc) -> None:
    await tx.db[OPPORTUNITIES].insert_one(opp, session=tx.session)


async def load_opportunity(tx: Tx, opp_id: str) -> Doc | None:
    return await tx.db[OPPORTUNITIES].find_one({"_id": opp_id}, session=tx.session)


async def opportunity_for_signal(tx: Tx, signal_id: str) -> Doc | None:
    return await tx.db[OPPORTUNITIES].find_one({"signal_id": signal_id}, session=tx.session)


async def update_opportunity(tx: Tx, opp_id: str, changes: Doc) -> Doc:
    doc = await tx.db[OPPORTUNITIES].find_one_and_update(
        {"_id": opp_id}, changes, return_document=ReturnDocument.AFTER, session=tx.session
    )
    if doc is None:  # pragma: no cover - loaded in the same transaction
        raise RuntimeError(f"opportunity {opp_id} vanished under the transaction")
    return doc


async def get_opportunity(db: Db, opp_id: str) -> Doc | None:
    return await db[OPPORTUNITIES].find_one({"_id": opp_id})


async def list_opportunities(
    db: Db,
    *,
    owner: str | None,
    stage: str | None,
    status: str | None,
    origin: str | None,
    flagged: bool | None,
    limit: int,
    offset: int,
) -> tuple[list[Doc], int]:
    query: Doc = {}
    if owner is not None:
        query["owner"] = owner
    if stage is not None:
        query["stage"] = stage
    if status is not None:
        query["status"] = status
    if origin is not None:
        query["origin"] = origin
    if flagged is True:
        query["commitment_flags.0"] = {"$exists": True}
    elif flagged is False:
        query["commitment_flags.0"] = {"$exists": False}
    total = await db[OPPORTUNITIES].count_documents(query)
    docs = await (
        db[OPPORTUNITIES]
        .find(query, {"activities": 0})
        .sort([("created_at", DESCENDING), ("_id", DESCENDING)])
        .skip(offset)
        .limit(limit)
    ).to_list()
    return docs, total


async def insert_activity(tx: Tx, activity: Doc) -> None:
    await tx.db[ACTIVITIES].insert_one(activity, session=tx.session)


async def activities_for(db: Db, opp_id: str, limit: int = 200) -> list[Doc]:
    return await (
        db[ACTIVITIES]
        .find({"opportunity_id": opp_id})
        .sort([("occurred_at", DESCENDING), ("_id", DESCENDING)])
        .limit(limit)
    ).to_list()


def _stored_amount(value: Any) -> Decimal:
    """An amount summed by MongoDB (Decimal128; doubles in documents written before money was exact).

    A non-finite double (stored before the API refused them) counts as 0, with a warning.
    """
    try:
        return to_amount(value)
    except ValueError:
        log.warning("ignoring a non-finite stored amount in the forecast: %r", value)
        return Decimal(0)


async def stage_totals(db: Db, owner: str | None) -> tuple[list[StageTotal], list[str]]:
    """Count and amount per stage (and the currencies seen) for the forecast."""
    match: Doc = {} if owner is None else {"owner": owner}
    rows = await (
        await db[OPPORTUNITIES].aggregate(
            [
                {"$match": match},
                {
                    "$group": {
                        "_id": {"stage": "$stage", "currency": {"$ifNull": ["$currency", "EUR"]}},
                        "n": {"$sum": 1},
                        "amount": {"$sum": {"$ifNull": ["$amount", 0]}},
                    }
                },
            ]
        )
    ).to_list()
    totals = [StageTotal(str(r["_id"]["stage"]), int(r["n"]), _stored_amount(r["amount"])) for r in rows]
    currencies = sorted({str(r["_id"]["currency"]) for r in rows})
    return totals, currencies
