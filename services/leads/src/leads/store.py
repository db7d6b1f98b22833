"""Marketing's own collections, and the mapping between documents and the domain.

Collections (database ``leads``):
- ``leads``          one document per person (unique normalized email)
- ``behaviours``     every recorded behaviour occurrence, with its meta
- ``scoring_rules``  every version of the scoring rules (``_id`` = version)
- ``verdicts``       every verdict received from sales, applied or ignored
- ``import_jobs``    every import: format, mapping, state, checkpoint, counts, lease
- ``import_chunks``  an import's file as it was uploaded, in 1 MiB pieces (dropped when done)
- ``import_rejections`` the rows each import rejected, with why (its error report)
- ``import_mappings`` saved column mappings (``_id`` = name)

The Mongo implementations of ``leads.repository`` work inside the unit of work's
transaction (``session=tx.session`` on every call); :class:`MongoLeadsUnit` groups them.
The read-side queries for the API (``get_lead``, ``list_leads``, ``list_behaviours``,
``current_rules``, ``rules_history``) go straight to the database.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Collection, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from crm_contracts.events.common import Behaviour
from crm_platform import audit, custom_fields_api
from crm_platform.actor import Actor
from crm_platform.batch import Batch
from crm_platform.cache import TtlCache
from crm_platform.erasure import PERSON_HASHES, Related, Target, person_hashes
from crm_platform.imports import store as imports_store
from crm_platform.imports.store import JobCodec
from crm_platform.mongo import Tx, drop_retired_indexes
from crm_platform.paging import Sort, cursor_value, page, sorts, text_search
from crm_platform.retention import ANONYMISED, Action, Rule, anonymous_email
from crm_platform.uow import MongoUnit
from pymongo import ASCENDING, DESCENDING, TEXT, ReplaceOne, ReturnDocument, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError

from leads.domain.imports import ImportDefaults, ImportJob
from leads.domain.leads import BehaviourRecord, Consent, Lead, LeadStatus, Touch, VerdictRecord
from leads.domain.scoring import (
    DEFAULT_RULES,
    BehaviourRule,
    Reason,
    RulesAuthor,
    ScoringRules,
)

Doc = dict[str, Any]
Db = AsyncDatabase[Doc]

log = logging.getLogger("leads.store")

LEADS = "leads"
BATCH_LEADS = "leads.by_id"  # a consumer batch's leads (crm_platform.batch)
BATCH_SAVES = "leads.saved_later"  # the ids of its leads whose saves wait for the batch's bulk_write
BEHAVIOURS = "behaviours"
# A tracker's batch of behaviours is ONE audit entry naming them, not copying each (~440 bytes per
# handoff): a read takes their values from the stored behaviours (audit.inserts_named; they are
# only ever inserted, and deleted by retention, in audited transactions).
audit.inserts_named(BEHAVIOURS)
# A bulk capture's or an import batch's new leads likewise: ONE entry naming them, not a copy of
# each (542 bytes of BSON and about 8 us of leads' CPU per bulk-captured or imported lead, and the
# audit log's 270 KB per 500-lead batch in mongod); a read takes their values from the stored lead
# with every later entry's changes undone (audit.with_values). Leads are inserted new (a merge is
# an update), have string ids and are written only in audited transactions (retention and
# erasure too; the list keys job writes only LIST_KEYS, a derived field no entry lists).
audit.inserts_named(LEADS)
SCORING_RULES = "scoring_rules"
VERDICTS = "verdicts"
IMPORT_JOBS = imports_store.IMPORT_JOBS
IMPORT_CHUNKS = imports_store.IMPORT_CHUNKS
IMPORT_REJECTIONS = imports_store.IMPORT_REJECTIONS
IMPORT_MAPPINGS = imports_store.IMPORT_MAPPINGS
DUPLICATE_KEY = 11000  # MongoDB's error code for a unique index violation


# Where a lead came from, one value each (``lead_to_doc``): its channel (``channel:<channel>``)
# and, when it has one, its campaign (``campaign:<campaign>``). ONE index (``by_source``) serves
# ?channel=, ?campaign= and both, where ``by_channel`` and the partial ``in_campaign`` were two
# with the same entries per lead (``RETIRED_INDEXES``): mongod 6.0 checks every index of the
# collection for each lead a transaction updates (seventeenth session, indexes).
SOURCES = "sources"
audit.derived_field(SOURCES)  # an index key, not a change anyone made: no history lists it


def source_keys(channel: str | None, campaign: str | None) -> list[str]:
    """The ``SOURCES`` entries of a channel and a campaign (a lead's; a query may name one)."""
    named = (("channel", channel), ("campaign", campaign))
    return [f"{kind}:{value}" for kind, value in named if value is not None]


# The lists a lead is in, one value each (``lead_to_doc``): its status (``status:<status>``) and,
# once assigned, its rep's book (``rep:<rep>``). One ``listed*`` index per order of GET /leads
# over them serves both the lists by status and a rep's lists, where a status index and a rep
# index per order were eight (``RETIRED_INDEXES``): mongod 6.0 checks every index of the
# collection for each document a transaction updates, and a handoff updates its lead twice in
# one (the qualifying behaviour, then the assignment; twelfth session, handoff).
LIST_KEYS = "list_keys"
audit.derived_field(LIST_KEYS)  # an index key, not a change anyone made: no history lists it


def status_key(status: str) -> str:
    return f"status:{status}"


def rep_key(rep: str) -> str:
    return f"rep:{rep}"


def list_keys(status: str, rep: str | None) -> list[str]:
    return [status_key(status)] if rep is None else [status_key(status), rep_key(rep)]


# Every status a lead can have: a query asking for all of them (``EVERY_STATUS``) reads the
# ``listed*`` index of its order one status after the other, merged in order (MongoDB's
# SORT_MERGE), so the orders below need no index of their own (one entry less per lead each).
EVERY_STATUS = {"$in": [status_key(s) for s in sorted(s.value for s in LeadStatus)]}
# Every order of GET /leads is served that way. The time and name orders' values rarely tie
# beyond a batch (the leads of one bulk request or import batch share their times), so a later
# page's range (``_from_cursor``) reads little more than the page. ``score`` ties (most leads
# at 0): a later page asks each status's scan for its side of the cursor, the tie's ``_id``
# included (``_each_status_after``), so a page deep in the tie reads about a page of keys, as
# its own index ``by_score`` did (retired: mongod 6.0 checks every index of ``leads`` for each
# lead a transaction updates, twice per handoff; seventeenth session, indexes).
STATUS_MERGED_ORDERS = frozenset({"created_at", "updated_at", "name", "score"})
TIED_ORDERS = frozenset({"score"})
# Indexes an earlier version made that a declared one now serves (dropped at start-up):
# ``by_updated`` (retention's ``updated_at`` range: ``by_updated_at`` serves it), the rep's and
# the campaign's whole-collection indexes (now partial, under new names), and the orders that
# ``listed*`` serves for every status (``STATUS_MERGED_ORDERS``), and the status and rep
# indexes of every order, which the ``listed*`` indexes replace.
RETIRED_INDEXES = (
    "by_updated",
    "by_campaign",
    "by_rep",
    "by_rep_updated_at",
    "by_rep_score",
    "by_rep_name",
    "newest",
    "by_updated_at",
    "by_name",
    # one status index and one rep index per order: the ``listed*`` indexes serve both
    "by_status",
    "by_status_updated_at",
    "by_status_score",
    "by_status_name",
    "assigned",
    "assigned_updated_at",
    "assigned_score",
    "assigned_name",
    # the score order's own index: ``listed_score`` serves it for every status
    "by_score",
    # the channel's and the campaign's: ``by_source`` serves both
    "by_channel",
    "in_campaign",
)


async def ensure_indexes(db: Db) -> None:
    """Indexes, and version 1 of the scoring rules (the defaults) if none is stored.

    Each index costs every inserted lead mongod time (the import's largest step), so each one
    serves a listed query no other index serves (tests/test_leads_lists.py ``explain``s them)."""
    await db[LEADS].create_index("email", unique=True, name="email_unique")
    await db[BEHAVIOURS].create_index("recorded_at", name="by_recorded")
    await db[LEADS].create_index(
        [(SOURCES, ASCENDING), ("created_at", DESCENDING), ("_id", DESCENDING)], name="by_source"
    )
    # Every order reads the status lists (STATUS_MERGED_ORDERS): no order has an index of its own.
    assert {s.field for s in LEAD_SORTS.values()} <= STATUS_MERGED_ORDERS
    await _ensure_list_indexes(db)
    # ?q= : every word of the name, company and email (default_language none: names are not stemmed).
    await db[LEADS].create_index(
        [("name", TEXT), ("company", TEXT), ("email", TEXT)], name="search", default_language="none"
    )
    await _ensure_other_indexes(db)
    try:
        await db[SCORING_RULES].update_one(
            {"_id": DEFAULT_RULES.version},
            {"$setOnInsert": {k: v for k, v in rules_to_doc(DEFAULT_RULES).items() if k != "_id"}},
            upsert=True,
        )
    except DuplicateKeyError:
        pass  # another replica seeded it at the same moment


async def _ensure_list_indexes(db: Db) -> None:
    """Every order of GET /leads and the export over the lists a lead is in (``LIST_KEYS``):
    by status, and a sales rep's leads (domain.access); ``listed_updated_at`` is also what
    retention (RETENTION_RULES) looks expired leads up by. Leads stored before the lists (or
    their ``SOURCES``) had them get theirs first; then the retired indexes go."""
    for sort_field in ("created_at", *(s.field for s in LEAD_SORTS.values() if s.field != "created_at")):
        await db[LEADS].create_index(
            [(LIST_KEYS, ASCENDING), (sort_field, DESCENDING), ("_id", DESCENDING)],
            name="listed" if sort_field == "created_at" else f"listed_{sort_field}",
        )
    await fill_list_keys(db)
    await drop_retired_indexes(db[LEADS], RETIRED_INDEXES)


async def fill_list_keys(db: Db) -> int:
    """Give each lead without ``LIST_KEYS`` its lists, as ``lead_to_doc`` writes them: leads an
    earlier version stored (at start-up), and during a rolling update the leads an earlier
    replica saves meanwhile (its save unsets the field: :func:`list_keys_job`). Finds them
    through the ``listed`` index's entries for a missing field, not by reading every lead."""
    # a rep's key only for a lead with a rep (missing and null are both "not assigned")
    rep = {"$cond": [{"$gt": ["$assigned_rep", None]}, [{"$concat": ["rep:", "$assigned_rep"]}], []]}
    status = [{"$concat": ["status:", "$status"]}]
    result = await db[LEADS].update_many(
        {LIST_KEYS: {"$exists": False}}, [{"$set": {LIST_KEYS: {"$concatArrays": [status, rep]}}}]
    )
    # likewise the lead's SOURCES, found through ``by_source``'s entries for a missing field
    campaign = {
        "$cond": [{"$eq": [{"$type": "$campaign"}, "string"]}, [{"$concat": ["campaign:", "$campaign"]}], []]
    }
    channel = [{"$concat": ["channel:", "$origin_channel"]}]
    sources = await db[LEADS].update_many(
        {SOURCES: {"$exists": False}}, [{"$set": {SOURCES: {"$concatArrays": [channel, campaign]}}}]
    )
    return result.modified_count + sources.modified_count


def list_keys_job(db: Db, every_seconds: float = 60.0) -> Callable[[], Coroutine[Any, Any, None]]:
    """A runtime background job: :func:`fill_list_keys` every ``every_seconds`` (a lead an
    earlier replica saved during a rolling update is back in its lists within a round)."""

    async def keep_list_keys_filled() -> None:
        while True:
            await asyncio.sleep(every_seconds)
            try:
                if filled := await fill_list_keys(db):
                    log.info("gave %d leads their list keys (saved by an earlier version)", filled)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the job outlives a failed round (database away)
                log.warning("list keys round failed (%s); retrying next round", exc)

    return keep_list_keys_filled


async def _ensure_other_indexes(db: Db) -> None:
    """Behaviours, verdicts, custom field filters and imports."""
    await db[BEHAVIOURS].create_index([("lead_id", ASCENDING), ("occurred_at", ASCENDING)], name="by_lead")
    await db[BEHAVIOURS].create_index(
        [("lead_id", ASCENDING), ("external_id", ASCENDING)],
        unique=True,
        name="external_id",
        partialFilterExpression={"external_id": {"$type": "string"}},
    )
    await db[VERDICTS].create_index("lead_id", name="by_lead")
    await custom_fields_api.ensure_index(db, LEADS)  # ?cf= filters on custom fields
    await imports_store.ensure_indexes(db)


# -- leads -------------------------------------------------------------------------------


def _counts_to_doc(counts: Any) -> Doc:
    return {Behaviour(b).value: int(n) for b, n in counts.items()}


def _counts_from_doc(doc: Doc | None) -> dict[Behaviour, int]:
    return {Behaviour(b): int(n) for b, n in (doc or {}).items()}


def reason_to_doc(r: Reason) -> Doc:
    return {
        "behaviour": r.behaviour.value,
        "count": r.count,
        "counted": r.counted,
        "weight": r.weight,
        "points": r.points,
    }


def reason_from_doc(d: Doc) -> Reason:
    return Reason(
        Behaviour(d["behaviour"]), int(d["count"]), int(d["counted"]), float(d["weight"]), float(d["points"])
    )


# Where marketing's database holds people (crm_platform.erasure): the lead's e-mail, name and
# custom fields, and the note sales gave with its verdict on the lead.
LEAD_PEOPLE = Target(
    LEADS,
    emails=("email",),
    clear=("custom",),  # a text custom field may hold personal data (docs/governance.md)
    related=(Related(VERDICTS, "lead_id", clear=("note",)),),
)
ERASURE_TARGETS = (LEAD_PEOPLE,)


def lead_to_doc(lead: Lead) -> Doc:
    doc: Doc = {
        "_id": lead.id,
        "email": lead.email,
        "name": lead.name,
        "company": lead.company,
        "origin_channel": lead.origin_channel,
        "campaign": lead.campaign,
        "consent": {"marketing_email": lead.consent.marketing_email, "captured_at": lead.consent.captured_at},
        "status": lead.status.value,
        "created_at": lead.created_at,
        "updated_at": lead.updated_at,
        "touches": [{"channel": t.channel, "campaign": t.campaign, "at": t.at} for t in lead.touches],
        "touch_count": lead.touch_count,
        "behaviour_totals": _counts_to_doc(lead.behaviour_totals),
        "cycle_counts": _counts_to_doc(lead.cycle_counts),
        "cycle_started_at": lead.cycle_started_at,
        "score": lead.score,
        "score_reasons": [reason_to_doc(r) for r in lead.score_reasons],
        "rules_version": lead.rules_version,
        "threshold": lead.threshold,
        "last_behaviour_at": lead.last_behaviour_at,
        "qualified_at": lead.qualified_at,
        "handoff_count": lead.handoff_count,
        "recycle_count": lead.recycle_count,
        "verdict": lead.verdict,
        "verdict_reason_code": lead.verdict_reason_code,
        "verdict_at": lead.verdict_at,
        "assigned_rep": lead.assigned_rep,
        "assigned_at": lead.assigned_at,
        LIST_KEYS: list_keys(lead.status.value, lead.assigned_rep),
        SOURCES: source_keys(lead.origin_channel, lead.campaign),
    }
    if lead.custom:  # absent when none: a lead without custom fields costs nothing more
        doc["custom"] = dict(lead.custom)
    # ``with_person_hashes(doc, LEAD_PEOPLE)``: the person is the lead's one e-mail (LEAD_PEOPLE's
    # ``emails``), hashed without walking the document for it (2 us of every bulk or imported lead).
    doc[PERSON_HASHES] = person_hashes(lead.email)
    return doc


def lead_from_doc(d: Doc) -> Lead:
    return Lead(
        id=d["_id"],
        email=d["email"],
        name=d["name"],
        company=d.get("company"),
        origin_channel=d["origin_channel"],
        campaign=d.get("campaign"),
        consent=Consent(bool(d["consent"]["marketing_email"]), d["consent"]["captured_at"]),
        status=LeadStatus(d["status"]),
        created_at=d["created_at"],
        updated_at=d["updated_at"],
        touches=tuple(Touch(t["channel"], t.get("campaign"), t["at"]) for t in d.get("touches", [])),
        touch_count=int(d.get("touch_count", 1)),
        behaviour_totals=_counts_from_doc(d.get("behaviour_totals")),
        cycle_counts=_counts_from_doc(d.get("cycle_counts")),
        cycle_started_at=d.get("cycle_started_at"),
        score=float(d.get("score", 0.0)),
        score_reasons=tuple(reason_from_doc(r) for r in d.get("score_reasons", [])),
        rules_version=d.get("rules_version"),
        threshold=d.get("threshold"),
        last_behaviour_at=d.get("last_behaviour_at"),
        qualified_at=d.get("qualified_at"),
        handoff_count=int(d.get("handoff_count", 0)),
        recycle_count=int(d.get("recycle_count", 0)),
        verdict=d.get("verdict"),
        verdict_reason_code=d.get("verdict_reason_code"),
        verdict_at=d.get("verdict_at"),
        custom=d.get("custom") or {},
        assigned_rep=d.get("assigned_rep"),
        assigned_at=d.get("assigned_at"),
    )


class MongoLeads:
    def __init__(self, tx: Tx) -> None:
        self.tx = tx

    async def get(self, lead_id: str) -> Lead | None:
        """The lead; in a consumer's batch (``tx.batch``) the leads of EVERY event of the batch
        are read with one query (each remembered for the audit's 'before', so a save costs no
        second read), and the view keeps this batch's saves."""
        view = await self._batch_view()
        if view is not None and lead_id in view:
            doc = view[lead_id]
        else:
            doc = await self.tx.db[LEADS].find_one({"_id": lead_id}, session=self.tx.session)
        return lead_from_doc(doc) if doc else None

    async def _batch_view(self) -> dict[str, Doc | None] | None:
        batch = self.tx.batch
        if batch is None:
            return None
        view: dict[str, Doc | None] | None = batch.peek(BATCH_LEADS)
        if view is None:
            view = await batch.memo(BATCH_LEADS, lambda: self._load_batch(batch))
        return view

    async def _load_batch(self, batch: Batch) -> dict[str, Doc | None]:
        ids = sorted({i for event, _ in batch.events if isinstance(i := vars(event).get("lead_id"), str)})
        view: dict[str, Doc | None] = dict.fromkeys(ids)
        view.update((d["_id"], d) for d in await self._to_change({"_id": {"$in": ids}}))
        return view

    async def _to_change(self, query: Doc) -> list[Doc]:
        """The leads ``query`` finds, each remembered as the audit's 'before' of this
        transaction's save of it (``find_to_change``: no second read when it is saved)."""
        coll = self.tx.db[LEADS]
        if isinstance(coll, audit.AuditedCollection):
            return await coll.find_to_change(query, session=self.tx.session)
        return [d async for d in coll.find(query, session=self.tx.session)]

    def _seen_in_batch(self, leads: Sequence[Lead]) -> None:
        """This unit wrote ``leads``: the batch's view shows them from now on."""
        view = self.tx.batch.peek(BATCH_LEADS) if self.tx.batch is not None else None
        if view is not None:
            view.update((lead.id, lead_to_doc(lead)) for lead in leads)

    async def get_by_email(self, email: str) -> Lead | None:
        doc = await self.tx.db[LEADS].find_one({"email": email}, session=self.tx.session)
        return lead_from_doc(doc) if doc else None

    async def get_many(self, lead_ids: Collection[str]) -> dict[str, Lead]:
        """The leads by id, read to be changed (:meth:`save_many` writes them with no read)."""
        if not lead_ids:
            return {}
        docs = await self._to_change({"_id": {"$in": sorted(lead_ids)}})
        return {lead.id: lead for lead in map(lead_from_doc, docs)}

    async def get_many_by_email(self, emails: Collection[str]) -> dict[str, Lead]:
        """The leads by e-mail, read to be merged (:meth:`save_many` writes them with no read)."""
        if not emails:
            return {}
        docs = await self._to_change({"email": {"$in": sorted(emails)}})
        return {lead.email: lead for lead in map(lead_from_doc, docs)}

    async def add_many(self, leads: Sequence[Lead]) -> None:
        # one of their emails captured meanwhile: DuplicateKeyError, as for add()
        docs = [lead_to_doc(lead) for lead in leads]
        # The bulk paths (bulk capture, import batches): one audit entry per batch, naming each lead.
        with audit.one_entry_per_batch():
            await _insert_many(self.tx, LEADS, docs, "a lead with one of these emails exists")
        self._seen_in_batch(leads)

    async def save_many(self, leads: Sequence[Lead]) -> None:
        """Write ``leads`` (read by :meth:`get_many` or :meth:`get_many_by_email`) in one
        ``bulk_write``, audited as ONE entry per request naming each lead with its own changes
        (``one_entry_per_batch``: a tracker's batch of 100 qualifying behaviours wrote 100 audit
        entries for its leads, each with four index entries; eleventh session, handoff). Each
        lead the transaction read is written as its changed fields (:func:`changed_fields`), not
        whole: a qualified lead is about a quarter of its document, and the whole one was
        encoded, sent over the socket and written to the oplog for each handoff (thirteenth
        session, handoff)."""
        if leads:
            coll, session = self.tx.db[LEADS], self.tx.session
            audited = isinstance(coll, audit.AuditedCollection)
            befores = [coll.known(ld.id, session) if audited else None for ld in leads]
            writes = [changed_fields(b, lead_to_doc(ld)) for b, ld in zip(befores, leads, strict=True)]
            with audit.one_entry_per_batch():
                await coll.bulk_write(writes, session=session)
            self._seen_in_batch(leads)

    async def add(self, lead: Lead) -> None:
        await self.tx.db[LEADS].insert_one(lead_to_doc(lead), session=self.tx.session)
        self._seen_in_batch([lead])

    async def add_unless_email_known(self, lead: Lead) -> Lead | None:
        # An upsert that only sets fields on insert: a stored lead with this email is left as
        # it is and answered (its state before = now); otherwise ``lead`` is inserted. Two
        # captures of a new email at once: one inserts, the other's transaction conflicts and
        # runs again (it then finds the lead), as the unique email index made them before.
        found = await self.tx.db[LEADS].find_one_and_update(
            {"email": lead.email},
            {"$setOnInsert": lead_to_doc(lead)},
            upsert=True,
            return_document=ReturnDocument.BEFORE,
            session=self.tx.session,
        )
        return lead_from_doc(found) if found is not None else None

    async def assign_if_qualified(self, lead_id: str, rep: str, assigned_at: datetime) -> bool:
        """Sales' assignment (``Lead.assign``) in ONE conditioned write, no read first: True when
        the lead is qualified (what sales was handed) and holds no assignment as late, and is
        now assigned. False tells nothing (no such lead, a later assignment, another status, or
        a consumer's batch of several, whose leads :meth:`get` reads at once): the caller reads
        the lead then. Its audit entry comes from the state before the write returns (no read)."""
        batch = self.tx.batch
        if batch is not None and len(batch.events) > 1:
            return False
        found = await self.tx.db[LEADS].find_one_and_update(
            {
                "_id": lead_id,
                "status": LeadStatus.QUALIFIED.value,
                # Lead.assign: only an assignment later than the one stored (none: null or missing)
                "$or": [{"assigned_at": None}, {"assigned_at": {"$lt": assigned_at}}],
            },
            {
                "$set": {
                    "assigned_rep": rep,
                    "assigned_at": assigned_at,
                    LIST_KEYS: list_keys(LeadStatus.QUALIFIED.value, rep),
                }
            },
            return_document=ReturnDocument.BEFORE,
            session=self.tx.session,
        )
        return found is not None

    async def save(self, lead: Lead) -> None:
        """Write the lead. A lead of a consumer's batch view (:meth:`get`) is written with the
        batch's other saves in ONE ``bulk_write`` before the commit (``Tx.update_later``; its
        audit entry needs no read: the view remembered its state before), one round trip per
        batch instead of one per event; a lead saved twice in a batch has its first save
        written first, so each save stays a change of its own, as one by one (the batch's saves
        are one audit entry naming each lead's changes and the event that made them)."""
        doc = lead_to_doc(lead)
        view = self.tx.batch.peek(BATCH_LEADS) if self.tx.batch is not None else None
        if view is None or lead.id not in view:
            await self.tx.db[LEADS].replace_one({"_id": lead.id}, doc, session=self.tx.session)
            self._seen_in_batch([lead])
            return
        assert self.tx.batch is not None
        deferred: set[str] = await self.tx.batch.memo(BATCH_SAVES, _no_saves)
        if lead.id in deferred:
            await self.tx.flush_inserts(LEADS)
            deferred.clear()
        self.tx.update_later(LEADS, changed_fields(view[lead.id], doc))
        deferred.add(lead.id)
        view[lead.id] = doc


async def _no_saves() -> set[str]:
    return set()


def changed_fields(before: Doc | None, after: Doc) -> UpdateOne | ReplaceOne[Doc]:
    """The write that turns the stored lead ``before`` into ``after``: only the top-level fields
    that differ (``$set``, and ``$unset`` for a field ``after`` no longer has), or the whole
    document when ``before`` is unknown. A consumer's assignment changes two fields of a lead of
    about 30: the whole lead (1.2 KB) was encoded, sent and written to the oplog for them
    (eleventh session, handoff); the audit entry is the same (its state after is ``before``
    with these fields, no read)."""
    if before is None:
        return ReplaceOne({"_id": after["_id"]}, after)
    changed = {k: v for k, v in after.items() if k != "_id" and (k not in before or before[k] != v)}
    removed = {k: "" for k in before if k not in after and k != "_id"}
    update: Doc = {"$set": changed} if changed else {}
    if removed:
        update["$unset"] = removed
    return UpdateOne({"_id": after["_id"]}, update or {"$set": {"updated_at": after["updated_at"]}})


async def get_lead(db: Db, lead_id: str) -> Lead | None:
    doc = await db[LEADS].find_one({"_id": lead_id})
    return lead_from_doc(doc) if doc else None


# GET /leads?sort=: newest first by default; each order has its index (ensure_indexes).
LEAD_SORTS = sorts(
    Sort("newest", "created_at"),
    Sort("oldest", "created_at", descending=False),
    Sort("updated", "updated_at"),
    Sort("score", "score"),
    Sort("name", "name", descending=False),
)


@dataclass(frozen=True)
class LeadPage:
    items: list[Lead]
    next_cursor: str | None


@dataclass(frozen=True)
class LeadQuery:
    """What GET /leads filters, searches and sorts on (a score range is read through the
    ``listed_score`` index, the channel and campaign through ``by_source``, or the order's index)."""

    status: str | None = None
    channel: str | None = None
    q: str | None = None
    sort: str = "newest"
    custom: Doc = field(default_factory=dict)  # crm_platform.custom_fields.filter_of (?cf=)
    rep: str | None = None  # a sales rep reads only the leads assigned to them (domain.access)
    campaign: str | None = None
    min_score: float | None = None
    max_score: float | None = None

    def filter(self, cursor: str | None) -> Doc:
        query: Doc = dict(self.custom)
        spec = LEAD_SORTS[self.sort]
        merged = self.status is None and spec.field in STATUS_MERGED_ORDERS
        if (lists := in_lists(self.status, self.rep, merged)) is not None:
            query[LIST_KEYS] = lists
        if (sources := in_sources(self.channel, self.campaign)) is not None:
            query[SOURCES] = sources
        if self.min_score is not None or self.max_score is not None:
            query["score"] = self._score_range()
        if self.q:
            # A whole address is the lead's identity (its unique index); words search the text index.
            query.update({"email": self.q.strip().lower()} if "@" in self.q else text_search(self.q))
        if cursor is not None:
            after = spec.after(cursor)
            if query.get(LIST_KEYS) is EVERY_STATUS and spec.field in TIED_ORDERS:
                return _each_status_after(query, after)
            query = (
                {"$and": [query, *(_from_cursor(spec, cursor) if merged else []), after]} if query else after
            )
        return query

    def _score_range(self) -> Doc:
        bounds = {"$gte": self.min_score, "$lte": self.max_score}
        return {op: value for op, value in bounds.items() if value is not None}


def in_lists(status: str | None, rep: str | None, every_status: bool) -> Doc | str | None:
    """What a query asks of ``LIST_KEYS``: a rep's book (of one status), one status, or
    ``every_status`` (the order's ``listed*`` index read one status after the other, merged)."""
    if rep is not None:
        return rep_key(rep) if status is None else {"$all": [rep_key(rep), status_key(status)]}
    if status is not None:
        return status_key(status)
    return EVERY_STATUS if every_status else None


def in_sources(channel: str | None, campaign: str | None) -> Doc | str | None:
    """What a query asks of ``SOURCES``: a channel, a campaign, both, or nothing."""
    keys = source_keys(channel, campaign)
    if not keys:
        return None
    return keys[0] if len(keys) == 1 else {"$all": keys}


def _from_cursor(spec: Sort, cursor: str) -> list[Doc]:
    """The page's range on the order's field (the cursor's value and what follows it, nulls
    included), besides ``Sort.after``'s exact ``$or``: merging the statuses' index scans, the
    server bounds each scan by it; the ``$or`` alone it applies after reading from the start."""
    value = cursor_value(cursor)
    if value is None:
        return []
    return [{spec.field: {"$not": {"$gt": value}} if spec.descending else {"$gte": value}}]


def _each_status_after(query: Doc, after: Doc) -> Doc:
    """``query`` (every status's list) after a cursor, as one ``$or`` branch per status and side
    of the cursor (``Sort.after``'s ties, and the values past it), each with the query's other
    filters: every branch is one ``listed*`` scan bounded by its status, value and ``_id``, and
    the server merges them in order (SORT_MERGE). The same filter as ``{"$and": [query, after]}``;
    in that form the server bounds no scan by the tie's ``_id`` (it reads the tie from its start
    in every status), and with the filters outside the branches it reads another index and sorts.
    A ``$text`` search stays outside (its own index serves it)."""
    rest = {k: v for k, v in query.items() if k not in (LIST_KEYS, "$text")}
    branches = [
        {"$and": [{LIST_KEYS: status}, *([rest] if rest else []), side]}
        for status in EVERY_STATUS["$in"]
        for side in after["$or"]
    ]
    return {**({"$text": query["$text"]} if "$text" in query else {}), "$or": branches}


def find_leads(db: Db, query: LeadQuery, cursor: str | None = None) -> Any:
    """The cursor GET /leads reads (and tests ``explain``): filter, search, order."""
    return db[LEADS].find(query.filter(cursor)).sort(LEAD_SORTS[query.sort].spec)


async def list_leads(
    db: Db,
    *,
    status: str | None,
    channel: str | None,
    limit: int,
    cursor: str | None,
    q: str | None = None,
    sort: str = "newest",
    custom: Doc | None = None,
    rep: str | None = None,
    campaign: str | None = None,
    min_score: float | None = None,
    max_score: float | None = None,
) -> LeadPage:
    """Keyset paging in the query's order (crm_platform.paging), so pages never shift."""
    query = LeadQuery(status, channel, q, sort, custom or {}, rep, campaign, min_score, max_score)
    docs = await find_leads(db, query, cursor).limit(limit + 1).to_list()
    items, next_cursor = page(docs, limit, LEAD_SORTS[sort])
    return LeadPage([lead_from_doc(d) for d in items], next_cursor)


# -- behaviours --------------------------------------------------------------------------


def behaviour_to_doc(record: BehaviourRecord) -> Doc:
    doc: Doc = {
        "_id": record.id,
        "lead_id": record.lead_id,
        "behaviour": record.behaviour.value,
        "occurred_at": record.occurred_at,
        "recorded_at": record.recorded_at,
        "meta": dict(record.meta),
        "recorded_by": {"user_id": record.recorded_by.user_id, "username": record.recorded_by.display_name},
        "in_cycle": record.in_cycle,
        "score_after": record.score_after,
        "rules_version": record.rules_version,
        "qualified": record.qualified,
    }
    if record.external_id is not None:
        doc["external_id"] = record.external_id
    return doc


def behaviour_from_doc(d: Doc) -> BehaviourRecord:
    by = d.get("recorded_by") or {}
    return BehaviourRecord(
        id=d["_id"],
        lead_id=d["lead_id"],
        behaviour=Behaviour(d["behaviour"]),
        occurred_at=d["occurred_at"],
        recorded_at=d["recorded_at"],
        recorded_by=Actor(str(by.get("user_id", "")), str(by.get("username", ""))),
        in_cycle=bool(d.get("in_cycle", True)),
        score_after=float(d.get("score_after", 0.0)),
        rules_version=int(d["rules_version"]),
        qualified=bool(d.get("qualified", False)),
        meta=d.get("meta") or {},
        external_id=d.get("external_id"),
    )


class MongoBehaviours:
    def __init__(self, tx: Tx) -> None:
        self.tx = tx

    async def by_external_id(self, lead_id: str, external_id: str) -> BehaviourRecord | None:
        doc = await self.tx.db[BEHAVIOURS].find_one(
            {"lead_id": lead_id, "external_id": external_id}, session=self.tx.session
        )
        return behaviour_from_doc(doc) if doc else None

    async def by_external_ids(
        self, pairs: Collection[tuple[str, str]]
    ) -> dict[tuple[str, str], BehaviourRecord]:
        if not pairs:
            return {}
        wanted = [{"lead_id": lead_id, "external_id": external_id} for lead_id, external_id in sorted(pairs)]
        cursor = self.tx.db[BEHAVIOURS].find({"$or": wanted}, session=self.tx.session)
        records = [behaviour_from_doc(d) async for d in cursor]
        return {(r.lead_id, r.external_id): r for r in records if r.external_id is not None}

    async def add(self, record: BehaviourRecord) -> None:
        await self.tx.db[BEHAVIOURS].insert_one(behaviour_to_doc(record), session=self.tx.session)

    async def add_many(self, records: Sequence[BehaviourRecord]) -> None:
        # a concurrent retry recorded one of the pairs: DuplicateKeyError, as for add()
        docs = [behaviour_to_doc(r) for r in records]
        # A tracker's batch: one audit entry per batch, naming each behaviour (as the leads' bulk paths).
        with audit.one_entry_per_batch():
            await _insert_many(self.tx, BEHAVIOURS, docs, "one of these behaviours is recorded")


async def _insert_many(tx: Tx, collection: str, docs: list[Doc], duplicate: str) -> None:
    """``insert_many`` in the unit's transaction; a unique index's refusal is a
    ``DuplicateKeyError`` (what the handlers' race retry expects), not a ``BulkWriteError``."""
    if not docs:
        return
    try:
        await tx.db[collection].insert_many(docs, session=tx.session)
    except BulkWriteError as exc:
        if any(e.get("code") == DUPLICATE_KEY for e in exc.details.get("writeErrors", [])):
            raise DuplicateKeyError(duplicate, DUPLICATE_KEY) from exc
        raise


async def list_behaviours(db: Db, lead_id: str, limit: int) -> list[BehaviourRecord]:
    """A lead's behaviour, most recent occurrence first."""
    docs = await (
        db[BEHAVIOURS]
        .find({"lead_id": lead_id})
        .sort([("occurred_at", DESCENDING), ("_id", DESCENDING)])
        .limit(limit)
    ).to_list()
    return [behaviour_from_doc(d) for d in docs]


# -- scoring rules -----------------------------------------------------------------------


def rules_to_doc(rules: ScoringRules) -> Doc:
    return {
        "_id": rules.version,
        "rules": {b.value: {"weight": r.weight, "cap": r.cap} for b, r in rules.rules.items()},
        "threshold": rules.threshold,
        "changed_by": {"user_id": rules.changed_by.user_id, "username": rules.changed_by.username},
        "changed_at": rules.changed_at,
        "note": rules.note,
    }


def rules_from_doc(d: Doc) -> ScoringRules:
    return ScoringRules(
        rules={Behaviour(b): BehaviourRule(float(r["weight"]), r.get("cap")) for b, r in d["rules"].items()},
        threshold=float(d["threshold"]),
        version=int(d["_id"]),
        changed_by=RulesAuthor(d["changed_by"]["user_id"], d["changed_by"]["username"]),
        changed_at=d.get("changed_at"),
        note=d.get("note"),
    )


RulesCache = TtlCache[str, ScoringRules]
"""The current scoring rules, read on every behaviour, kept ``CRM_CONFIG_CACHE_SECONDS``.

Another replica's new version is used here within that time (leads scored meanwhile
name the version they were scored with); this replica's own change at once.
"""


class MongoScoringRules:
    def __init__(self, tx: Tx, cache: RulesCache | None = None) -> None:
        self.tx = tx
        self.cache = cache if cache is not None else RulesCache(0.0)
        self._wrote = False

    async def current(self, *, fresh: bool = False) -> ScoringRules:
        async def load() -> ScoringRules:
            doc = await self.tx.db[SCORING_RULES].find_one(
                {}, sort=[("_id", DESCENDING)], session=self.tx.session
            )
            return rules_from_doc(doc) if doc else DEFAULT_RULES

        if fresh:
            return await load()
        return await self.cache.get("current", load, cacheable=not self._wrote, since=self.tx.began)

    async def add(self, rules: ScoringRules) -> None:
        if not self._wrote:
            self._wrote = True
            self.tx.after_commit.append(self.cache.invalidate)
        self.cache.invalidate()
        await self.tx.db[SCORING_RULES].insert_one(rules_to_doc(rules), session=self.tx.session)


async def current_rules(db: Db) -> ScoringRules:
    doc = await db[SCORING_RULES].find_one({}, sort=[("_id", DESCENDING)])
    return rules_from_doc(doc) if doc else DEFAULT_RULES


PREVIEW_MAX_LEADS = 20_000  # the leads a scoring preview reads at most (newest first)
OPEN_STATUSES = ("new", "nurturing", "recycled")  # the leads a score can still qualify


async def open_cycles(db: Db) -> AsyncIterator[dict[Behaviour, int]]:
    """The current cycle's behaviour counts of the leads a score can still qualify, newest first,
    at most :data:`PREVIEW_MAX_LEADS` (one field read per lead, through the ``listed`` index)."""
    cursor = (
        db[LEADS]
        .find({LIST_KEYS: {"$in": [status_key(s) for s in OPEN_STATUSES]}}, {"cycle_counts": 1, "_id": 0})
        .sort([("created_at", DESCENDING), ("_id", DESCENDING)])
        .limit(PREVIEW_MAX_LEADS)
    )
    async for doc in cursor:
        yield _counts_from_doc(doc.get("cycle_counts"))


async def rules_history(db: Db, limit: int) -> list[ScoringRules]:
    docs = await db[SCORING_RULES].find({}).sort("_id", DESCENDING).limit(limit).to_list()
    return [rules_from_doc(d) for d in docs]


# -- verdicts ----------------------------------------------------------------------------


def verdict_to_doc(record: VerdictRecord) -> Doc:
    return {
        "_id": record.id,
        "lead_id": record.lead_id,
        "verdict": record.verdict,
        "reason_code": record.reason_code,
        "note": record.note,
        "decided_by": record.decided_by,
        "opportunity_id": record.opportunity_id,
        "decided_at": record.decided_at,
        "received_at": record.received_at,
        "applied": record.applied,
        "ignored_because": record.ignored_because,
        "status_before": record.status_before.value,
    }


class MongoVerdicts:
    def __init__(self, tx: Tx) -> None:
        self.tx = tx

    async def add(self, record: VerdictRecord) -> None:
        await self.tx.db[VERDICTS].insert_one(verdict_to_doc(record), session=self.tx.session)


# -- imports (the machinery is crm_platform.imports.store; the lead job's defaults are ours) ---


def _defaults_to_doc(d: ImportDefaults) -> Doc:
    return {"source_channel": d.source_channel, "marketing_email": d.marketing_email, "campaign": d.campaign}


def _defaults_from_doc(d: Doc) -> ImportDefaults:
    return ImportDefaults(d["source_channel"], bool(d["marketing_email"]), d.get("campaign"))


IMPORTS: JobCodec[ImportJob] = JobCodec(ImportJob, _defaults_to_doc, _defaults_from_doc)
CHUNK_BYTES = imports_store.CHUNK_BYTES


def import_to_doc(job: ImportJob) -> Doc:
    return IMPORTS.to_doc(job)


def import_from_doc(d: Doc) -> ImportJob:
    return IMPORTS.from_doc(d)


class MongoImports(imports_store.MongoImports[ImportJob]):
    def __init__(self, tx: Tx) -> None:
        super().__init__(tx, IMPORTS)


drop_chunks = imports_store.drop_chunks
put_chunk = imports_store.put_chunk
read_file = imports_store.read_file
renew_lease = imports_store.renew_lease
note_import_failure = imports_store.note_import_failure
take_upload = imports_store.take_upload
renew_upload = imports_store.renew_upload
release_upload = imports_store.release_upload
release_lease = imports_store.release_lease
rejections = imports_store.rejections
get_mapping = imports_store.get_mapping
list_mappings = imports_store.list_mappings


async def claim_import(db: Db, owner: str, now: datetime, lease: timedelta) -> ImportJob | None:
    return await imports_store.claim_import(db, IMPORTS, owner, now, lease)


async def get_import(db: Db, job_id: str) -> ImportJob | None:
    return await imports_store.get_import(db, IMPORTS, job_id)


async def list_imports(db: Db, limit: int) -> list[ImportJob]:
    return await imports_store.list_imports(db, IMPORTS, limit)


# -- export ------------------------------------------------------------------------------


async def export_leads(
    db: Db, *, status: str | None, channel: str | None, rep: str | None = None
) -> AsyncIterator[Lead]:
    """Every lead the list route's filters select, newest first, from one cursor (the export)."""
    query: Doc = {LIST_KEYS: in_lists(status, rep, every_status=True)}  # listed, statuses merged
    if channel is not None:
        query[SOURCES] = source_keys(channel, None)[0]
    cursor = db[LEADS].find(query).sort([("created_at", DESCENDING), ("_id", DESCENDING)]).batch_size(1000)
    async for doc in cursor:
        yield lead_from_doc(doc)


# -- the unit ----------------------------------------------------------------------------


class MongoLeadsUnit(MongoUnit):
    """``leads.repository.LeadsUnit`` over one transaction (events go to its outbox)."""

    def __init__(self, tx: Tx, rules_cache: RulesCache | None = None) -> None:
        super().__init__(tx)
        self.leads = MongoLeads(tx)
        self.behaviours = MongoBehaviours(tx)
        self.rules = MongoScoringRules(tx, rules_cache)
        self.verdicts = MongoVerdicts(tx)
        self.imports = MongoImports(tx)


# -- retention (crm_platform.retention): marketing's record types and what expiry does to them --

RETENTION_RULES = (
    # A lead nobody touched for the period: the person's name and email go (the email is the
    # lead's identity: a unique stand-in), the figures and channels stay.
    # Its custom fields go too: a text one may be personal data (docs/governance.md).
    Rule(
        "lead",
        LEADS,
        "updated_at",
        Action.ANONYMISE,
        eligible={LIST_KEYS: EVERY_STATUS},  # every lead; read through listed_updated_at
        scrub={"name": ANONYMISED, "email": anonymous_email, "custom": {}},
    ),
    # Tracked behaviour: deleted.
    Rule("behaviour", BEHAVIOURS, "recorded_at", Action.DELETE),
)
