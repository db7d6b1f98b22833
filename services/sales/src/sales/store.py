"""Sales' own collections (database ``sales``): the Mongo repositories and the API's read side.

Collections:
- ``reps``           the rep roster: ``_id`` = user id (the token's ``sub``), ``name`` (display), ``active``
- ``counters``       ``{_id: "round_robin", value}``: the round-robin turn counter
- ``config``         ``{_id: "sales", lead_response_sla_minutes, commitment_review: {value_threshold,
                     commitment_threshold}}``
- ``pipeline``       ``{_id: "current", version, stages: [...]}``
- ``inbox``          one item per ``lead.qualified`` handoff (``_id`` = its event id)
- ``opportunities``  opportunities and, once won, deals (``_id`` = the deal id)
- ``activities``     calls, visits, emails, quotes logged against an opportunity
- ``accounts``       companies sales opened itself (referral, outbound): ``key`` (name case-folded) unique
- ``contacts``       people sales works with, created directly or imported: ``email`` unique (capture's rule)

The repositories implement ``repository.py`` over the handler's transaction (always
``session=tx.session``) and map entities to documents in one place (``*_doc`` /
``*_from_doc``); ``save`` sets the entity's fields, so fields older documents hold and
the entity does not know stay as they are. The functions over a ``Db`` are the read
side the API lists and shows with.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import datetime
from decimal import Decimal
from typing import Any

from crm_contracts import utcnow
from crm_contracts.events.leads import LeadQualifiedV1
from crm_contracts.events.sales import Commitment, RejectReason, Verdict
from crm_contracts.events.service_desk import CommitmentDecisionKind
from crm_platform import audit, custom_fields_api
from crm_platform.batch import Batch
from crm_platform.cache import TtlCache
from crm_platform.counters import RoundRobinCounter, TurnReservations
from crm_platform.erasure import PERSON_HASHES, Related, Target, person_hashes, with_person_hashes
from crm_platform.imports import store as imports_store
from crm_platform.imports.store import JobCodec
from crm_platform.money import to_amount
from crm_platform.mongo import Tx, drop_retired_indexes
from crm_platform.paging import Sort, index_specs, keyset, page, sorts, text_search
from crm_platform.retention import ANONYMISED, Action, Rule, anonymous_email
from crm_platform.shredding import is_held_key_id
from crm_platform.uow import MongoUnit
from pymongo import ASCENDING, DESCENDING, TEXT, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from sales.domain.account import Account, DirectSource
from sales.domain.assignment import Rep
from sales.domain.contact import Contact
from sales.domain.contact_imports import ContactImportDefaults, ContactImportJob
from sales.domain.forecast import StageTotal
from sales.domain.inbox import DEFAULT_SLA_MINUTES, AssignmentRecord, InboxItem, InboxStatus, VerdictRecord
from sales.domain.opportunity import (
    DEFAULT_CURRENCY,
    Activity,
    ActivityType,
    CommitmentFlag,
    LeadSource,
    Opportunity,
    OpportunityStatus,
    Origin,
    StageChange,
)
from sales.domain.pipeline import DEFAULT_PIPELINE, Pipeline, Stage
from sales.domain.response_times import Answer
from sales.domain.review import CommitmentReview, Decision, ReviewPolicy, ReviewStatus
from sales.repository import DuplicateAccount, DuplicateContact, DuplicateOpportunity

log = logging.getLogger("crm.sales.store")

Doc = dict[str, Any]
Db = AsyncDatabase[Doc]

REPS = "reps"
COUNTERS = "counters"
CONFIG = "config"
PIPELINE = "pipeline"
INBOX = "inbox"
# A consumer batch's new inbox items are ONE audit entry naming them, not copying each item (its
# handoff whole, about 1.3 KB): the read side takes the values from the item (audit.inserts_named).
audit.inserts_named(INBOX)
OPPORTUNITIES = "opportunities"
ACTIVITIES = "activities"
ACCOUNTS = "accounts"
CONTACTS = "contacts"

CONFIG_ID = "sales"
PIPELINE_ID = "current"
TURNS = RoundRobinCounter("round_robin", collection=COUNTERS, field="value")
NEWEST_FIRST = [("received_at", DESCENDING), ("_id", DESCENDING)]
BATCH_ITEMS = "sales.inbox_by_lead"  # a consumer batch's inbox items (crm_platform.batch)
BATCH_TURNS = "sales.turns"  # the round-robin turns a consumer batch reserved


async def ensure_indexes(
    db: Db, *, default_sla_minutes: int = DEFAULT_SLA_MINUTES, default_review: ReviewPolicy | None = None
) -> None:
    """Indexes, and the seed documents (counter, config, default pipeline) if absent.

    The review policy is seeded into a config document that has none (one stored before
    commitment reviews existed too); afterwards PUT /config/commitment-review changes it.
    """
    await db[REPS].create_index("active", name="active")
    await db[INBOX].create_index([("lead_id", ASCENDING), ("received_at", DESCENDING)], name="by_lead")
    await db[OPPORTUNITIES].create_index([("owner", ASCENDING), ("created_at", DESCENDING)], name="by_owner")
    await db[OPPORTUNITIES].create_index([("stage", ASCENDING), ("owner", ASCENDING)], name="by_stage")
    await db[OPPORTUNITIES].create_index("lead_id", name="by_lead")
    await ensure_list_indexes(db)
    await ensure_inbox_list_indexes(db)
    await ensure_book_indexes(db)
    # One opportunity per inbox item and per service-desk signal, whatever redelivers them.
    for key, name in (("inbox_item_id", "inbox_item_unique"), ("signal_id", "signal_unique")):
        await db[OPPORTUNITIES].create_index(
            key, unique=True, name=name, partialFilterExpression={key: {"$type": "string"}}
        )
    await db[ACTIVITIES].create_index(
        [("opportunity_id", ASCENDING), ("occurred_at", DESCENDING)], name="by_opportunity"
    )
    await ensure_retention_indexes(db)
    await TURNS.seed(db)
    now = utcnow()
    seeds: list[tuple[str, str, Doc]] = [
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
    await db[CONFIG].update_one(
        {"_id": CONFIG_ID, "commitment_review": {"$exists": False}},
        {"$set": {"commitment_review": review_policy_doc(default_review or ReviewPolicy())}},
    )


# -- mapping: entities <-> documents -----------------------------------------------------------


def rep_doc(rep: Rep) -> Doc:
    return {
        "_id": rep.user_id,
        "name": rep.name,
        "active": rep.active,
        "updated_at": rep.updated_at,
        "updated_by": rep.updated_by,
    }


def rep_from_doc(d: Doc) -> Rep:
    return Rep(str(d["_id"]), bool(d["active"]), d.get("name"), d.get("updated_at"), d.get("updated_by"))


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


# Where sales' database holds people (crm_platform.erasure): the handed-off lead's contact and
# the verdict's note on them, the contacts of opportunities (and the activities logged on
# those), and the contacts sales keeps.
# An item of a sealed handoff names its contact by the held key it was opened with (by_held_key):
# its ``by_person_hash`` entry a time-ordered id at the index's edge, not a random hash
# (docs/performance.md, twenty-sixth session, erasurekey).
INBOX_PEOPLE = Target(INBOX, emails=("handoff.contact.email",), clear=("verdict.note",), by_held_key=True)
OPPORTUNITY_PEOPLE = Target(
    OPPORTUNITIES, emails=("contacts.email",), related=(Related(ACTIVITIES, "opportunity_id"),)
)
CONTACT_PEOPLE = Target(CONTACTS, emails=("email",))
ERASURE_TARGETS = (INBOX_PEOPLE, OPPORTUNITY_PEOPLE, CONTACT_PEOPLE)


def item_doc(item: InboxItem) -> Doc:
    v = item.verdict
    doc: Doc = {
        "_id": item.id,
        "lead_id": item.lead_id,
        "status": item.status.value,
        "owner": item.owner,
        "assigned_by": item.assigned_by,
        "assigned_at": item.assigned_at,
        "assignment_history": [vars(a).copy() for a in item.assignment_history],
        "received_at": item.received_at,
        "handed_off_at": item.handed_off_at,
        "response_due_at": item.response_due_at,
        "sla_minutes": item.sla_minutes,
        "handoff_number": item.handoff_number,
        "handoff": item.handoff.to_payload(),
        "handoff_event_ids": list(item.handoff_event_ids),
        "company": item.company,
        "correlation_id": item.correlation_id,
        "verdict": None
        if v is None
        else {
            "verdict": v.verdict.value,
            "reason_code": v.reason_code.value if v.reason_code else None,
            "note": v.note,
            "decided_by": v.decided_by,
            "decided_at": v.decided_at,
            "opportunity_id": v.opportunity_id,
        },
        "updated_at": item.updated_at,
    }
    if item.last_handed_off_at is not None:
        doc["last_handed_off_at"] = item.last_handed_off_at
    if item.superseded_event_ids:
        doc["superseded_event_ids"] = list(item.superseded_event_ids)
    doc[PERSON_HASHES] = item_person_hashes(item)
    return doc


def item_person_hashes(item: InboxItem) -> list[str]:
    """``with_person_hashes(doc, INBOX_PEOPLE)``'s value: the person is the handoff's one contact
    e-mail (INBOX_PEOPLE's ``emails``), hashed without walking the document for it (1.5 us of
    every handoff sales stores; docs/performance.md, twenty-second session, drainsales). A
    contact opened with a held key is named by that key's id instead (``by_held_key``: erasure
    finds the item through the key, which holds the hash); an erased one by nothing."""
    hashes = person_hashes(item.handoff.contact.email)
    return [item.person_key] if hashes and item.person_key is not None else hashes


def _person_key(d: Doc) -> str | None:
    """The held key an item names its contact by (:func:`item_person_hashes`), if any."""
    return next((h for h in d.get(PERSON_HASHES, ()) if is_held_key_id(h)), None)


def item_from_doc(d: Doc) -> InboxItem:
    v = d.get("verdict")
    return InboxItem(
        id=str(d["_id"]),
        lead_id=d["lead_id"],
        company=d["company"],
        handoff=LeadQualifiedV1.model_validate(d["handoff"]),
        correlation_id=d["correlation_id"],
        received_at=d["received_at"],
        handed_off_at=d["handed_off_at"],
        response_due_at=d["response_due_at"],
        sla_minutes=int(d["sla_minutes"]),
        updated_at=d["updated_at"],
        status=InboxStatus(d["status"]),
        owner=d.get("owner"),
        assigned_by=d.get("assigned_by"),
        assigned_at=d.get("assigned_at"),
        assignment_history=[
            AssignmentRecord(a["owner"], a["by"], a["how"], a["at"], a.get("counter"))
            for a in d.get("assignment_history", [])
        ],
        handoff_number=int(d.get("handoff_number", 1)),
        handoff_event_ids=list(d.get("handoff_event_ids", [])),
        superseded_event_ids=list(d.get("superseded_event_ids", [])),
        last_handed_off_at=d.get("last_handed_off_at"),
        person_key=_person_key(d),
        verdict=None
        if not v
        else VerdictRecord(
            Verdict(v["verdict"]),
            RejectReason(v["reason_code"]) if v.get("reason_code") else None,
            v.get("note"),
            v["decided_by"],
            v["decided_at"],
            v.get("opportunity_id"),
        ),
    )


_OPPORTUNITY_REFS = ("account_id", "lead_id", "inbox_item_id", "signal_id", "source_deal_id", "signal_kind")


def review_policy_doc(p: ReviewPolicy) -> Doc:
    return {"value_threshold": p.value_threshold, "commitment_threshold": p.commitment_threshold}


def review_policy_from_doc(d: Doc | None) -> ReviewPolicy:
    if d is None:
        return ReviewPolicy()
    value = d.get("value_threshold")
    return ReviewPolicy(None if value is None else to_amount(value), d.get("commitment_threshold"))


def review_doc(r: CommitmentReview) -> Doc:
    return {
        **{k: getattr(r, k) for k in ("review_id", "requested_by", "requested_at", "reasons")},
        "commitments": [c.model_dump() for c in r.commitments],
        "status": r.status.value,
        "decisions": [{**vars(d), "decision": d.decision.value} for d in r.decisions],
        **{k: getattr(r, k) for k in ("reviewed_by", "reviewed_at", "received_at")},
    }


def review_from_doc(d: Doc | None) -> CommitmentReview | None:
    if d is None:
        return None
    return CommitmentReview(
        review_id=d["review_id"],
        requested_by=d["requested_by"],
        requested_at=d["requested_at"],
        reasons=list(d.get("reasons", [])),
        commitments=[Commitment.model_validate(c) for c in d.get("commitments", [])],
        status=ReviewStatus(d["status"]),
        decisions=[
            Decision(x["commitment_id"], CommitmentDecisionKind(x["decision"]), x.get("reason"))
            for x in d.get("decisions", [])
        ],
        reviewed_by=d.get("reviewed_by"),
        reviewed_at=d.get("reviewed_at"),
        received_at=d.get("received_at"),
    )


def opportunity_doc(o: Opportunity) -> Doc:
    doc: Doc = {
        "_id": o.id,
        "origin": o.origin.value,
        "status": o.status.value,
        "stage": o.stage,
        "owner": o.owner,
        "assigned_by": o.assigned_by,
        "account_name": o.account_name,
        **{k: getattr(o, k) for k in _OPPORTUNITY_REFS},
        "description": o.description,
        "lead_source": vars(o.lead_source).copy() if o.lead_source else None,
        "fields": o.fields,
        "amount": o.amount,
        "currency": o.currency,
        "contacts": o.contacts,
        "commitment_flags": [vars(f).copy() for f in o.commitment_flags],
        "commitment_review": review_doc(o.commitment_review) if o.commitment_review else None,
        "stage_history": [vars(h).copy() for h in o.stage_history],
        "stage_entered_at": o.stage_entered_at,
        "activity_count": o.activity_count,
        "last_activity_at": o.last_activity_at,
        "created_at": o.created_at,
        "updated_at": o.updated_at,
        "won_at": o.won_at,
        "lost_at": o.lost_at,
        "lost_reason": o.lost_reason,
        "correlation_id": o.correlation_id,
    }
    if o.origin == Origin.UPSELL:
        doc["assignment_counter"] = o.assignment_counter
    if o.origin == Origin.DIRECT:
        doc["direct_source"] = o.direct_source
    doc["custom"] = o.custom  # always set: save is a $set, an edit may clear every value
    return with_person_hashes(doc, OPPORTUNITY_PEOPLE)


def opportunity_from_doc(d: Doc) -> Opportunity:
    amount = d.get("amount")
    source = d.get("lead_source")
    return Opportunity(
        id=str(d["_id"]),
        origin=Origin(d["origin"]),
        stage=d["stage"],
        owner=d["owner"],
        assigned_by=d["assigned_by"],
        account_name=d["account_name"],
        correlation_id=d.get("correlation_id") or str(d["_id"]),
        created_at=d["created_at"],
        updated_at=d["updated_at"],
        stage_entered_at=d.get("stage_entered_at") or d["created_at"],
        status=OpportunityStatus(d["status"]),
        fields=dict(d.get("fields") or {}),
        amount=None if amount is None else to_amount(amount),
        currency=d.get("currency") or DEFAULT_CURRENCY,
        contacts=[dict(c) for c in d.get("contacts", [])],
        **{k: d.get(k) for k in _OPPORTUNITY_REFS},
        description=d.get("description"),
        lead_source=LeadSource(source["source_channel"], source.get("campaign"), source["score"])
        if source
        else None,
        commitment_flags=[CommitmentFlag(**f) for f in d.get("commitment_flags", [])],
        commitment_review=review_from_doc(d.get("commitment_review")),
        stage_history=[StageChange(**h) for h in d.get("stage_history", [])],
        activity_count=int(d.get("activity_count", 0)),
        last_activity_at=d.get("last_activity_at"),
        won_at=d.get("won_at"),
        lost_at=d.get("lost_at"),
        lost_reason=d.get("lost_reason"),
        assignment_counter=d.get("assignment_counter"),
        direct_source=d.get("direct_source"),
        custom=dict(d.get("custom") or {}),
    )


def activity_doc(a: Activity) -> Doc:
    return {"_id": a.id, **{k: v for k, v in vars(a).items() if k != "id"}, "type": a.type.value}


def activity_from_doc(d: Doc) -> Activity:
    amount = d.get("amount")
    return Activity(
        id=str(d["_id"]),
        opportunity_id=d["opportunity_id"],
        type=ActivityType(d["type"]),
        summary=d["summary"],
        occurred_at=d["occurred_at"],
        logged_at=d["logged_at"],
        logged_by=d["logged_by"],
        amount=None if amount is None else to_amount(amount),
        currency=d.get("currency"),
    )


def _fields(doc: Doc) -> Doc:
    return {k: v for k, v in doc.items() if k != "_id"}


# -- the repositories, inside the handler's transaction ----------------------------------------


class MongoInboxRepository:
    """The inbox inside one transaction.

    A handoff asks three questions about one lead's items (its newest, its pending
    one, how many): they are answered from the lead's items loaded once. In a
    consumer's batch (``tx.batch``, crm_platform.batch) the items of EVERY lead the
    batch hands over are loaded with one ``$in`` query, kept up to date with this
    batch's own writes, and new items are inserted together before the commit
    (``Tx.insert_later``): a batch costs a round trip or two, not two per event.
    Outside a batch the lead's items are loaded once per unit. A lead has one item per
    handoff, so a handful.
    """

    def __init__(self, tx: Tx) -> None:
        self.tx, self.col = tx, tx.db[INBOX]
        self._for_lead: tuple[str, list[Doc]] | None = None

    async def _items_of(self, lead_id: str) -> list[Doc]:
        """The lead's items, newest first (the ``lead`` index)."""
        batch = self.tx.batch
        if batch is not None:
            view = await batch.memo(BATCH_ITEMS, lambda: self._load_batch(batch))
            if lead_id in view:
                return view[lead_id]
        if self._for_lead is None or self._for_lead[0] != lead_id:
            await self.tx.flush_inserts(INBOX)  # a query sees only what was written
            cursor = self.col.find({"lead_id": lead_id}, session=self.tx.session).sort(NEWEST_FIRST)
            docs = await cursor.to_list()
            self._for_lead = (lead_id, docs)
        return self._for_lead[1]

    def preload(self) -> None:
        """Start reading the items of the batch's leads now (``Batch.preload``): a handoff's
        run beside the read of its held key, not after it."""
        batch = self.tx.batch
        if batch is not None:
            batch.preload(BATCH_ITEMS, lambda: self._load_batch(batch))

    async def _load_batch(self, batch: Batch) -> dict[str, list[Doc]]:
        """The items of every lead the batch's events name, by lead, newest first: one query."""
        lead_ids = sorted(
            {lead for event, _ in batch.events if isinstance(lead := getattr(event, "lead_id", None), str)}
        )
        view: dict[str, list[Doc]] = {lead: [] for lead in lead_ids}
        if lead_ids:
            await self.tx.flush_inserts(INBOX)
            query = {"lead_id": {"$in": lead_ids}}
            async for doc in self.col.find(query, session=self.tx.session).sort(NEWEST_FIRST):
                view[doc["lead_id"]].append(doc)
        return view

    def _remember(self, doc: Doc) -> None:
        """This unit wrote ``doc``: the batch's view of its lead shows it from now on."""
        self._for_lead = None
        view = self.tx.batch.peek(BATCH_ITEMS) if self.tx.batch is not None else None
        if view is None or doc["lead_id"] not in view:
            return
        items = [d for d in view[doc["lead_id"]] if d["_id"] != doc["_id"]] + [doc]
        items.sort(key=lambda d: (d["received_at"], d["_id"]), reverse=True)
        view[doc["lead_id"]] = items

    async def latest_for_lead(self, lead_id: str) -> InboxItem | None:
        docs = await self._items_of(lead_id)
        return item_from_doc(docs[0]) if docs else None

    async def pending_for_lead(self, lead_id: str) -> InboxItem | None:
        doc = next((d for d in await self._items_of(lead_id) if d.get("status") == "pending"), None)
        return None if doc is None else item_from_doc(doc)

    async def count_for_lead(self, lead_id: str) -> int:
        return len(await self._items_of(lead_id))

    async def add(self, item: InboxItem) -> None:
        doc = item_doc(item)
        if self.tx.batch is not None:
            self.tx.insert_later(INBOX, doc)  # with the batch's other new items, before the commit
        else:
            await self.col.insert_one(doc, session=self.tx.session)
        self._remember(doc)

    async def save(self, item: InboxItem) -> None:
        await self.tx.flush_inserts(INBOX)  # the item may be one this batch added
        doc = item_doc(item)
        result = await self.col.update_one({"_id": item.id}, {"$set": _fields(doc)}, session=self.tx.session)
        if result.matched_count != 1:  # pragma: no cover - loaded in the same transaction
            raise RuntimeError(f"inbox item {item.id} vanished under the transaction")
        self._remember(doc)


def preload_handoff(tx: Tx) -> None:
    """A handoff's inbox items read beside its other reads (``crm_platform.batch.with_preload``),
    and a lone handoff's round-robin turn reserved beside them too (outside the transaction, on
    its own connection, as ``take_turn`` takes it): two serial round trips fewer before a lone
    handoff is stored. A turn reserved and not used (the handoff refreshes a pending item that
    has an owner, is superseded, or nobody is active) is a skipped position of the rotation,
    as a retried transaction's or a batch's unused reservation is."""
    MongoInboxRepository(tx).preload()
    batch = tx.batch
    if batch is not None and len(batch.events) == 1:
        batch.preload(BATCH_TURNS, lambda: _one_turn_reserved(tx))


async def _one_turn_reserved(tx: Tx) -> TurnReservations:
    return TurnReservations(TURNS, deque(await TURNS.take_many(tx.db, 1)))  # no session


def turns_ahead(batch: Batch) -> int:
    """How many round-robin turns the batch still needs, this event's included (an estimate).

    Each later handoff of a lead not yet seen in the batch and without an assigned pending
    item takes one; a lead handed over twice in one batch takes one (the second handoff
    refreshes the item the first assigned). An estimate too high skips positions of the
    rotation (``crm_platform.counters``), one too low costs another increment.
    """
    view: dict[str, list[Doc]] = batch.peek(BATCH_ITEMS) or {}
    seen = {getattr(batch.events[batch.position][0], "lead_id", None)}
    needed = 1
    for event, envelope in batch.events[batch.position + 1 :]:
        lead = getattr(event, "lead_id", None)
        if envelope.event_type != LeadQualifiedV1.event_type or lead in seen:
            continue
        seen.add(lead)
        if not any(d.get("status") == "pending" and d.get("owner") for d in view.get(str(lead), ())):
            needed += 1
    return needed


class MongoOpportunityRepository:
    def __init__(self, tx: Tx) -> None:
        self.tx, self.col = tx, tx.db[OPPORTUNITIES]

    async def get(self, opportunity_id: str) -> Opportunity | None:
        doc = await self.col.find_one({"_id": opportunity_id}, session=self.tx.session)
        return None if doc is None else opportunity_from_doc(doc)

    async def for_signal(self, signal_id: str) -> Opportunity | None:
        doc = await self.col.find_one({"signal_id": signal_id}, session=self.tx.session)
        return None if doc is None else opportunity_from_doc(doc)

    async def add(self, opportunity: Opportunity) -> None:
        try:
            await self.col.insert_one(opportunity_doc(opportunity), session=self.tx.session)
        except DuplicateKeyError:
            raise DuplicateOpportunity(
                "an opportunity for this inbox item or signal exists already"
            ) from None

    async def save(self, opportunity: Opportunity) -> None:
        doc = _fields(opportunity_doc(opportunity))
        result = await self.col.update_one({"_id": opportunity.id}, {"$set": doc}, session=self.tx.session)
        if result.matched_count != 1:  # pragma: no cover - loaded in the same transaction
            raise RuntimeError(f"opportunity {opportunity.id} vanished under the transaction")

    async def add_activity(self, activity: Activity) -> None:
        await self.tx.db[ACTIVITIES].insert_one(activity_doc(activity), session=self.tx.session)

    async def count_in_stages(self, stages: list[str]) -> dict[str, int]:
        pipeline: list[Doc] = [
            {"$match": {"stage": {"$in": stages}}},
            {"$group": {"_id": "$stage", "n": {"$sum": 1}}},
        ]
        rows = await (await self.col.aggregate(pipeline, session=self.tx.session)).to_list()
        return {str(r["_id"]): int(r["n"]) for r in rows}


ConfigCache = TtlCache[str, Any]
"""The roster and the SLA, read on every handoff, kept ``CRM_CONFIG_CACHE_SECONDS`` (crm_platform.cache)."""


def no_cache() -> ConfigCache:
    return TtlCache(0.0)


class MongoTeamRepository:
    """The team's configuration inside one transaction; the roster and the SLA come from ``cache``.

    A write here drops the cache at once and again after the commit, and this unit stops
    using it: it reads its own, not yet committed, writes.
    """

    def __init__(self, tx: Tx, cache: ConfigCache | None = None) -> None:
        self.tx = tx
        self.cache = cache if cache is not None else no_cache()
        self._wrote = False

    def _changed(self) -> None:
        if not self._wrote:
            self._wrote = True
            self.tx.after_commit.append(self.cache.invalidate)
        self.cache.invalidate()

    async def active_rep_ids(self) -> list[str]:
        async def load() -> list[str]:
            reps = self.tx.db[REPS]
            docs = await reps.find({"active": True}, {"_id": 1}, session=self.tx.session).to_list()
            return [str(d["_id"]) for d in docs]

        return list(await self.cache.get("active_reps", load, cacheable=not self._wrote, since=self.tx.began))

    def turn_ahead(self) -> Awaitable[int] | None:
        if self.tx.batch is not None:
            return None  # the batch's turns are reserved together (take_turn)
        return asyncio.ensure_future(TURNS.take(self.tx.db))  # no session: its own connection

    async def take_turn(self) -> int:
        """The next turn; in a consumer's batch, from the turns the batch reserved together."""
        batch = self.tx.batch
        if batch is None:
            return await TURNS.take(self.tx.db)

        async def reserve() -> TurnReservations:
            return TurnReservations(TURNS)

        reserved = await batch.memo(BATCH_TURNS, reserve)
        return await reserved.take(self.tx.db, ahead=1 if reserved.held() else turns_ahead(batch))

    async def replace_reps(self, reps: list[Rep]) -> None:
        self._changed()
        await self.tx.db[REPS].delete_many({}, session=self.tx.session)
        if reps:
            await self.tx.db[REPS].insert_many([rep_doc(r) for r in reps], session=self.tx.session)

    async def save_rep(self, rep: Rep) -> Rep:
        self._changed()
        fields = {k: v for k, v in _fields(rep_doc(rep)).items() if not (k == "name" and v is None)}
        doc = await self.tx.db[REPS].find_one_and_update(
            {"_id": rep.user_id},
            {"$set": fields},
            upsert=True,
            return_document=ReturnDocument.AFTER,
            session=self.tx.session,
        )
        assert doc is not None  # upsert with ReturnDocument.AFTER always returns the document
        return rep_from_doc(doc)

    async def sla_minutes(self) -> int:
        async def load() -> int:
            doc = await self.tx.db[CONFIG].find_one({"_id": CONFIG_ID}, session=self.tx.session)
            return int(doc["lead_response_sla_minutes"]) if doc else DEFAULT_SLA_MINUTES

        return int(await self.cache.get("sla_minutes", load, cacheable=not self._wrote, since=self.tx.began))

    async def save_sla(self, minutes: int, by: str, now: datetime) -> None:
        self._changed()
        await self.tx.db[CONFIG].update_one(
            {"_id": CONFIG_ID},
            {"$set": {"lead_response_sla_minutes": minutes, "updated_at": now, "updated_by": by}},
            upsert=True,
            session=self.tx.session,
        )

    async def pipeline(self) -> Pipeline:
        return pipeline_from_doc(
            await self.tx.db[PIPELINE].find_one({"_id": PIPELINE_ID}, session=self.tx.session)
        )

    async def save_pipeline(self, pipeline: Pipeline, by: str, now: datetime) -> None:
        await self.tx.db[PIPELINE].replace_one(
            {"_id": PIPELINE_ID},
            {**pipeline_to_doc(pipeline), "updated_at": now, "updated_by": by},
            upsert=True,
            session=self.tx.session,
        )

    async def review_policy(self) -> ReviewPolicy:
        doc = await self.tx.db[CONFIG].find_one({"_id": CONFIG_ID}, session=self.tx.session)
        return review_policy_from_doc((doc or {}).get("commitment_review"))

    async def save_review_policy(self, policy: ReviewPolicy, by: str, now: datetime) -> None:
        await self.tx.db[CONFIG].update_one(
            {"_id": CONFIG_ID},
            {"$set": {"commitment_review": review_policy_doc(policy), "updated_at": now, "updated_by": by}},
            upsert=True,
            session=self.tx.session,
        )


def account_doc(a: Account) -> Doc:
    return {
        "_id": a.id,
        **{k: v for k, v in vars(a).items() if k != "id"},
        "source": a.source.value,
        "key": a.key,
    }


def account_from_doc(d: Doc) -> Account:
    return Account(
        id=str(d["_id"]),
        name=d["name"],
        owner=d["owner"],
        source=DirectSource(d["source"]),
        created_by=d["created_by"],
        created_at=d["created_at"],
        updated_at=d["updated_at"],
        industry=d.get("industry"),
        website=d.get("website"),
        custom=d.get("custom") or {},
    )


def contact_doc(c: Contact) -> Doc:
    return with_person_hashes(
        {"_id": c.id, **{k: v for k, v in vars(c).items() if k != "id"}}, CONTACT_PEOPLE
    )


def contact_from_doc(d: Doc) -> Contact:
    return Contact(
        id=str(d["_id"]),
        email=d["email"],
        name=d["name"],
        owner=d["owner"],
        source=d["source"],
        created_by=d["created_by"],
        created_at=d["created_at"],
        updated_at=d["updated_at"],
        account_id=d.get("account_id"),
        phone=d.get("phone"),
        role=d.get("role"),
        import_id=d.get("import_id"),
    )


class MongoAccountRepository:
    def __init__(self, tx: Tx) -> None:
        self.tx, self.col = tx, tx.db[ACCOUNTS]

    async def get(self, account_id: str) -> Account | None:
        doc = await self.col.find_one({"_id": account_id}, session=self.tx.session)
        return None if doc is None else account_from_doc(doc)

    async def add(self, account: Account) -> None:
        # Looked up first to name the existing account; the unique index still decides a race
        # (after a duplicate key error the transaction is aborted: nothing more can be read in it).
        known = await self.col.find_one({"key": account.key}, {"_id": 1}, session=self.tx.session)
        if known is not None:
            raise _duplicate_account(account, known["_id"])
        try:
            await self.col.insert_one(account_doc(account), session=self.tx.session)
        except DuplicateKeyError:
            raise _duplicate_account(account, None) from None


def _duplicate_account(account: Account, known_id: str | None) -> DuplicateAccount:
    return DuplicateAccount(
        f"an account named {account.name!r} exists already", field="body.name", account_id=known_id
    )


class MongoContactRepository:
    def __init__(self, tx: Tx) -> None:
        self.tx, self.col = tx, tx.db[CONTACTS]

    async def get_many(self, contact_ids: list[str]) -> list[Contact]:
        docs = await self.col.find({"_id": {"$in": contact_ids}}, session=self.tx.session).to_list()
        by_id = {d["_id"]: contact_from_doc(d) for d in docs}
        return [by_id[i] for i in contact_ids if i in by_id]

    async def by_emails(self, emails: list[str]) -> dict[str, Contact]:
        docs = await self.col.find({"email": {"$in": emails}}, session=self.tx.session).to_list()
        return {d["email"]: contact_from_doc(d) for d in docs}

    async def add(self, contact: Contact) -> None:
        known = await self.col.find_one({"email": contact.email}, {"_id": 1}, session=self.tx.session)
        if known is not None:
            raise _duplicate_contact(contact, known["_id"])
        try:
            await self.col.insert_one(contact_doc(contact), session=self.tx.session)
        except DuplicateKeyError:
            raise _duplicate_contact(contact, None) from None

    async def add_many(self, contacts: Sequence[Contact]) -> None:
        if contacts:
            await self.col.insert_many([contact_doc(c) for c in contacts], session=self.tx.session)

    async def save(self, contact: Contact) -> None:
        doc = _fields(contact_doc(contact))
        result = await self.col.update_one({"_id": contact.id}, {"$set": doc}, session=self.tx.session)
        if result.matched_count != 1:  # pragma: no cover - loaded in the same transaction
            raise RuntimeError(f"contact {contact.id} vanished under the transaction")


def _duplicate_contact(contact: Contact, known_id: str | None) -> DuplicateContact:
    return DuplicateContact(
        f"a contact with email {contact.email!r} exists already (one per email)",
        field="body.email",
        contact_id=known_id,
    )


# -- contact imports (the machinery is crm_platform.imports.store; the defaults are ours) --------

CONTACT_IMPORTS: JobCodec[ContactImportJob] = JobCodec(
    ContactImportJob,
    lambda d: {"owner": d.owner},
    lambda d: ContactImportDefaults(str(d["owner"])),
)


class MongoSalesUnit(MongoUnit):
    """``repository.SalesUnit`` over one MongoDB transaction; events go to its outbox."""

    def __init__(self, tx: Tx, config_cache: ConfigCache | None = None) -> None:
        super().__init__(tx)
        self.inbox = MongoInboxRepository(tx)
        self.opportunities = MongoOpportunityRepository(tx)
        self.team = MongoTeamRepository(tx, config_cache)
        self.accounts = MongoAccountRepository(tx)
        self.contacts = MongoContactRepository(tx)
        self.imports = imports_store.MongoImports(tx, CONTACT_IMPORTS)


# -- the read side (the API's listings and views) ----------------------------------------------


async def list_reps(db: Db) -> list[Rep]:
    return [rep_from_doc(d) for d in await db[REPS].find({}).sort("_id", ASCENDING).to_list()]


async def peek_turn(db: Db) -> int:
    return await TURNS.peek(db)


async def get_config(db: Db) -> Doc:
    doc = await db[CONFIG].find_one({"_id": CONFIG_ID})
    return doc or {"lead_response_sla_minutes": DEFAULT_SLA_MINUTES, "updated_at": None, "updated_by": None}


async def get_review_policy(db: Db) -> ReviewPolicy:
    return review_policy_from_doc((await get_config(db)).get("commitment_review"))


async def get_pipeline_doc(db: Db) -> Doc:
    doc = await db[PIPELINE].find_one({"_id": PIPELINE_ID})
    return doc or {**pipeline_to_doc(DEFAULT_PIPELINE), "updated_at": None, "updated_by": None}


async def get_pipeline(db: Db) -> Pipeline:
    return pipeline_from_doc(await db[PIPELINE].find_one({"_id": PIPELINE_ID}))


async def get_latest_item(db: Db, lead_id: str) -> InboxItem | None:
    doc = await db[INBOX].find_one({"lead_id": lead_id}, sort=NEWEST_FIRST)
    return None if doc is None else item_from_doc(doc)


# GET /inbox?sort=: newest first by default (crm_platform.paging).
INBOX_SORTS = sorts(
    Sort("newest", "received_at"),
    Sort("oldest", "received_at", descending=False),
    Sort("due", "response_due_at", descending=False),
    # Ties most recently changed first: a new item enters the score lists at the end of its tie,
    # as it enters the time lists at their end, not at its random id (the handoff's event id)
    # anywhere in the tie (a drain dirtied a page of each score list per item, which WiredTiger
    # then wrote out again). Not the receipt time: no other order's cursor ranges over this field,
    # so the planner takes no score list for them.
    Sort("score", "handoff.score", then="updated_at"),
)
# Every listing index begins with the status (after the owner for a rep's scope): a query
# without a status asks for each of them (`on_status_index`), which MongoDB reads as one
# ordered scan per status, merged (4 statuses). Each inserted item enters 6 listing indexes
# instead of the 11 one per (filter, order) took, the drain's largest share of mongod.
_INBOX_PREFIXES: tuple[tuple[str, ...], ...] = (("status",), ("owner", "status"))
INBOX_STATUSES = tuple(s.value for s in InboxStatus)
# Served by the indexes above since 2026-12-05 (ninth session), the score lists without the time
# since 2026-12-07 (twenty-second session): dropped at start-up.
RETIRED_INBOX_INDEXES = (
    "by_owner", "by_status_due", "list_received_at", "list_response_due_at", "list_handoff_score",
    "list_owner_received_at", "list_owner_response_due_at", "list_owner_handoff_score",
    "list_status_handoff_score", "list_owner_status_handoff_score",
)  # fmt: skip


async def ensure_inbox_list_indexes(db: Db) -> None:
    """The (status, order) and (owner, status, order) indexes of GET /inbox, the text index for ?q=."""
    for keys, name in index_specs("list", _INBOX_PREFIXES, INBOX_SORTS.values()):
        await db[INBOX].create_index(keys, name=name)
    await db[INBOX].create_index(
        [("company", TEXT), ("handoff.contact.name", TEXT), ("handoff.contact.email", TEXT)],
        name="search",
        default_language="none",
    )
    await drop_retired_indexes(db[INBOX], RETIRED_INBOX_INDEXES)


def on_status_index(flt: Doc, sort: Sort | None = None, cursor: str | None = None) -> Doc:
    """``flt`` after ``cursor`` (``keyset``), every status asked for when it names none.

    A listing index then serves it: one ordered scan per status, merged, each starting at the
    cursor (``Sort.after_in_range``: every item has each order's field)."""
    if "status" in flt or "$text" in flt:  # a search reads the text index
        return flt if sort is None else keyset(flt, sort, cursor)
    every = {**flt, "status": {"$in": list(INBOX_STATUSES)}}
    return every if sort is None or cursor is None else {"$and": [every, sort.after_in_range(cursor)]}


RESPONSE_TIMES_MAX_ITEMS = 50_000  # bounds GET /reps/response-times' read (a 90-day window)


async def response_answers(db: Db, since: datetime) -> list[Answer]:
    """The inbox items that reached a rep since ``since``, and every item still pending.

    Read through the ``received_at`` and ``status`` indexes with only the five fields the
    response times need, at most :data:`RESPONSE_TIMES_MAX_ITEMS` (newest first).
    """
    fields = {"owner": 1, "received_at": 1, "assigned_at": 1, "response_due_at": 1, "verdict.decided_at": 1}
    recent = on_status_index({"received_at": {"$gte": since}})
    query = {"$or": [recent, {"status": InboxStatus.PENDING.value}]}
    cursor = db[INBOX].find(query, fields).sort("received_at", DESCENDING).limit(RESPONSE_TIMES_MAX_ITEMS)
    out = []
    async for d in cursor:
        reached = max(d["received_at"], d.get("assigned_at") or d["received_at"])
        decided = (d.get("verdict") or {}).get("decided_at")
        out.append(Answer(d.get("owner"), reached, d["response_due_at"], decided))
    return out


@dataclass(frozen=True)
class InboxQuery:
    """What GET /inbox filters, searches and sorts on (``owner``: the actor's scope)."""

    owner: str | None = None
    status: str | None = None
    overdue: bool | None = None
    unassigned: bool = False
    q: str | None = None
    sort: str = "newest"

    def filter(self, now: datetime) -> Doc | None:
        """The filter at ``now``; None when it can match nothing (overdue but not pending)."""
        query: Doc = {}
        if self.unassigned:
            query["owner"] = None
        elif self.owner is not None:
            query["owner"] = self.owner
        if self.status is not None:
            query["status"] = self.status
        if self.overdue is True:
            if self.status not in (None, "pending"):
                return None
            query["status"] = "pending"
            query["response_due_at"] = {"$lt": now}
        elif self.overdue is False:
            query["$or"] = [{"status": {"$ne": "pending"}}, {"response_due_at": {"$gte": now}}]
        if self.q:
            query.update(text_search(self.q))
        return query


def find_inbox(db: Db, query: InboxQuery, now: datetime, cursor: str | None = None) -> Any:
    """The cursor GET /inbox and its export read (and tests ``explain``); None: nothing can match."""
    flt = query.filter(now)
    if flt is None:
        return None
    sort = INBOX_SORTS[query.sort]
    return db[INBOX].find(on_status_index(flt, sort, cursor)).sort(sort.spec)


@dataclass(frozen=True)
class InboxPage:
    items: list[InboxItem]
    total: int
    next_cursor: str | None


async def list_inbox(
    db: Db, query: InboxQuery, *, now: datetime, limit: int, offset: int = 0, cursor: str | None = None
) -> InboxPage:
    """A page in the query's order: after ``cursor`` (keyset, on an index) or at ``offset``."""
    found = find_inbox(db, query, now, cursor)
    flt = query.filter(now)
    if found is None or flt is None:
        return InboxPage([], 0, None)
    total = await (db[INBOX].count_documents(flt) if flt else db[INBOX].estimated_document_count())
    if cursor is None and offset:
        found = found.skip(offset)
    docs, next_cursor = page(await found.limit(limit + 1).to_list(), limit, INBOX_SORTS[query.sort])
    return InboxPage([item_from_doc(d) for d in docs], total, next_cursor)


async def export_inbox(db: Db, query: InboxQuery, now: datetime) -> AsyncIterator[InboxItem]:
    found = find_inbox(db, query, now)
    if found is None:
        return
    async for doc in found.batch_size(1000):
        yield item_from_doc(doc)


async def export_opportunities(db: Db, query: OpportunityQuery) -> AsyncIterator[Opportunity]:
    async for doc in find_opportunities(db, query).batch_size(1000):
        yield opportunity_from_doc(doc)


async def get_opportunity(db: Db, opportunity_id: str) -> Opportunity | None:
    doc = await db[OPPORTUNITIES].find_one({"_id": opportunity_id})
    return None if doc is None else opportunity_from_doc(doc)


# GET /opportunities?sort=: newest first by default (crm_platform.paging: field then _id).
OPPORTUNITY_SORTS = sorts(
    Sort("newest", "created_at"),
    Sort("oldest", "created_at", descending=False),
    Sort("updated", "updated_at"),
    Sort("amount", "amount"),
)
# The filters a list is narrowed by first (a rep's book is always narrowed by owner).
_LIST_PREFIXES: tuple[tuple[str, ...], ...] = ((), ("owner",), ("stage",), ("status",), ("origin",))


async def ensure_list_indexes(db: Db) -> None:
    """One index per (filter, order) of GET /opportunities, and the text index for ?q=."""
    for prefix in _LIST_PREFIXES:
        for field in sorted({s.field for s in OPPORTUNITY_SORTS.values()}):
            keys = [*((k, ASCENDING) for k in prefix), (field, DESCENDING), ("_id", DESCENDING)]
            await db[OPPORTUNITIES].create_index(keys, name="list_" + "_".join([*prefix, field]))
    await db[OPPORTUNITIES].create_index(
        [("account_name", TEXT), ("description", TEXT), ("contacts.name", TEXT), ("contacts.email", TEXT)],
        name="search",
        default_language="none",
    )
    await custom_fields_api.ensure_index(db, OPPORTUNITIES)  # ?cf= filters on custom fields


@dataclass(frozen=True)
class OpportunityQuery:
    """What GET /opportunities filters, searches and sorts on (``owner``: the actor's scope)."""

    owner: str | None = None
    stage: str | None = None
    status: str | None = None
    origin: str | None = None
    flagged: bool | None = None
    q: str | None = None
    sort: str = "newest"
    custom: Doc = dataclass_field(default_factory=dict)  # crm_platform.custom_fields.filter_of (?cf=)

    def filter(self) -> Doc:
        fields = (
            ("owner", self.owner),
            ("stage", self.stage),
            ("status", self.status),
            ("origin", self.origin),
        )
        query: Doc = {**self.custom, **{k: v for k, v in fields if v is not None}}
        if self.flagged is not None:
            query["commitment_flags.0"] = {"$exists": self.flagged}
        if self.q:
            query.update(text_search(self.q))
        return query


def find_opportunities(db: Db, query: OpportunityQuery, cursor: str | None = None) -> Any:
    """The cursor GET /opportunities reads (and tests ``explain``)."""
    sort = OPPORTUNITY_SORTS[query.sort]
    flt = query.filter()
    if cursor is not None:
        flt = {"$and": [flt, sort.after(cursor)]}
    return db[OPPORTUNITIES].find(flt, {"activities": 0}).sort(sort.spec)


@dataclass(frozen=True)
class OpportunityPage:
    items: list[Opportunity]
    total: int
    next_cursor: str | None


async def list_opportunities(
    db: Db, query: OpportunityQuery, *, limit: int, offset: int = 0, cursor: str | None = None
) -> OpportunityPage:
    """A page in the query's order: after ``cursor`` (keyset, served by an index) or at ``offset``.

    ``total`` counts the filter's matches (the collection's estimated size when unfiltered).
    """
    flt = query.filter()
    total = await (
        db[OPPORTUNITIES].count_documents(flt) if flt else db[OPPORTUNITIES].estimated_document_count()
    )
    found = find_opportunities(db, query, cursor)
    if cursor is None and offset:
        found = found.skip(offset)
    docs, next_cursor = page(await found.limit(limit + 1).to_list(), limit, OPPORTUNITY_SORTS[query.sort])
    return OpportunityPage([opportunity_from_doc(d) for d in docs], total, next_cursor)


async def activities_for(db: Db, opportunity_id: str, limit: int = 200) -> list[Activity]:
    docs = await (
        db[ACTIVITIES]
        .find({"opportunity_id": opportunity_id})
        .sort([("occurred_at", DESCENDING), ("_id", DESCENDING)])
        .limit(limit)
    ).to_list()
    return [activity_from_doc(d) for d in docs]


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
    group: Doc = {
        "_id": {"stage": "$stage", "currency": {"$ifNull": ["$currency", DEFAULT_CURRENCY]}},
        "n": {"$sum": 1},
        "amount": {"$sum": {"$ifNull": ["$amount", 0]}},
    }
    rows = await (await db[OPPORTUNITIES].aggregate([{"$match": match}, {"$group": group}])).to_list()
    totals = [StageTotal(str(r["_id"]["stage"]), int(r["n"]), _stored_amount(r["amount"])) for r in rows]
    currencies = sorted({str(r["_id"]["currency"]) for r in rows})
    return totals, currencies


# -- accounts and contacts sales created itself: lists (crm_platform.paging) and exports ----------

ACCOUNT_SORTS = sorts(
    Sort("newest", "created_at"),
    Sort("oldest", "created_at", descending=False),
    Sort("updated", "updated_at"),
    Sort("name", "key", descending=False),
)
CONTACT_SORTS = sorts(
    Sort("newest", "created_at"),
    Sort("oldest", "created_at", descending=False),
    Sort("updated", "updated_at"),
    Sort("name", "name", descending=False),
    Sort("email", "email", descending=False),
)
_ACCOUNT_PREFIXES: tuple[tuple[str, ...], ...] = ((), ("owner",), ("source",))
_CONTACT_PREFIXES: tuple[tuple[str, ...], ...] = ((), ("owner",), ("account_id",), ("source",))


async def ensure_book_indexes(db: Db) -> None:
    """Identity (unique name key, unique email), then each list's (filter, order) and text indexes."""
    await db[ACCOUNTS].create_index("key", unique=True, name="name_unique")
    await db[CONTACTS].create_index("email", unique=True, name="email_unique")
    await imports_store.ensure_indexes(db)  # contact imports (crm_platform.imports)
    await custom_fields_api.ensure_index(db, ACCOUNTS)  # ?cf= filters on accounts' custom fields
    for col, prefixes, orders in (
        (ACCOUNTS, _ACCOUNT_PREFIXES, ACCOUNT_SORTS),
        (CONTACTS, _CONTACT_PREFIXES, CONTACT_SORTS),
    ):
        for keys, name in index_specs("list", prefixes, orders.values()):
            await db[col].create_index(keys, name=name)
    await db[ACCOUNTS].create_index(
        [("name", TEXT), ("industry", TEXT), ("website", TEXT)], name="search", default_language="none"
    )
    await db[CONTACTS].create_index(
        [("name", TEXT), ("email", TEXT), ("role", TEXT)], name="search", default_language="none"
    )


@dataclass(frozen=True)
class BookQuery:
    """What GET /accounts and GET /contacts filter, search and sort on (``owner``: the actor's scope)."""

    owner: str | None = None
    source: str | None = None
    account_id: str | None = None  # contacts only
    q: str | None = None
    sort: str = "newest"
    custom: Doc = dataclass_field(
        default_factory=dict
    )  # accounts: crm_platform.custom_fields.filter_of (?cf=)

    def filter(self) -> Doc:
        fields = (("owner", self.owner), ("source", self.source), ("account_id", self.account_id))
        query: Doc = {**self.custom, **{k: v for k, v in fields if v is not None}}
        if self.q:
            query.update(text_search(self.q))
        return query


def find_accounts(db: Db, query: BookQuery, cursor: str | None = None) -> Any:
    """The cursor GET /accounts and its export read (and tests ``explain``)."""
    sort = ACCOUNT_SORTS[query.sort]
    return db[ACCOUNTS].find(keyset(query.filter(), sort, cursor)).sort(sort.spec)


def find_contacts(db: Db, query: BookQuery, cursor: str | None = None) -> Any:
    """The cursor GET /contacts and its export read (and tests ``explain``)."""
    sort = CONTACT_SORTS[query.sort]
    return db[CONTACTS].find(keyset(query.filter(), sort, cursor)).sort(sort.spec)


async def list_accounts(
    db: Db, query: BookQuery, *, limit: int, cursor: str | None
) -> tuple[list[Account], str | None]:
    docs, next_cursor = page(
        await find_accounts(db, query, cursor).limit(limit + 1).to_list(), limit, ACCOUNT_SORTS[query.sort]
    )
    return [account_from_doc(d) for d in docs], next_cursor


async def list_contacts(
    db: Db, query: BookQuery, *, limit: int, cursor: str | None
) -> tuple[list[Contact], str | None]:
    docs, next_cursor = page(
        await find_contacts(db, query, cursor).limit(limit + 1).to_list(), limit, CONTACT_SORTS[query.sort]
    )
    return [contact_from_doc(d) for d in docs], next_cursor


async def get_account(db: Db, account_id: str) -> Account | None:
    doc = await db[ACCOUNTS].find_one({"_id": account_id})
    return None if doc is None else account_from_doc(doc)


async def get_contact(db: Db, contact_id: str) -> Contact | None:
    doc = await db[CONTACTS].find_one({"_id": contact_id})
    return None if doc is None else contact_from_doc(doc)


async def export_accounts(db: Db, query: BookQuery) -> AsyncIterator[Account]:
    async for doc in find_accounts(db, query).batch_size(1000):
        yield account_from_doc(doc)


async def export_contacts(db: Db, query: BookQuery) -> AsyncIterator[Contact]:
    async for doc in find_contacts(db, query).batch_size(1000):
        yield contact_from_doc(doc)


# -- retention (crm_platform.retention): sales' record types and what expiry does to them ------


async def ensure_retention_indexes(db: Db) -> None:
    """What retention (RETENTION_RULES) looks expired records up by (the others are the lists')."""
    await db[ACTIVITIES].create_index("logged_at", name="by_logged")
    await db[OPPORTUNITIES].create_index([("status", ASCENDING), ("lost_at", ASCENDING)], name="by_lost")


RETENTION_RULES = (
    # A contact nobody changed for the period: the person's details go, the record stays.
    Rule("contact", CONTACTS, "updated_at", Action.ANONYMISE,
         scrub={"name": ANONYMISED, "email": anonymous_email, "phone": None, "role": None}),
    # A decided inbox item: the handed-off person's details go; the verdict and figures stay.
    Rule("inbox_item", INBOX, "received_at", Action.ANONYMISE, eligible={"status": {"$ne": "pending"}},
         scrub={"handoff.contact.name": ANONYMISED, "handoff.contact.email": anonymous_email,
                "handoff.contact.phone": None}),
    # A lost opportunity: its contacts and custom values (a text one may be about a person) go;
    # the deal's history stays for the forecast's past.
    Rule("lost_opportunity", OPPORTUNITIES, "lost_at", Action.ANONYMISE, eligible={"status": "lost"},
         scrub={"contacts": [], "custom": {}}),
    # Logged calls, visits, emails and quotes: deleted.
    Rule("activity", ACTIVITIES, "logged_at", Action.DELETE),
)  # fmt: skip
