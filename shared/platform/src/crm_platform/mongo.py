"""This service's own MongoDB database, and the unit of work over it.

Every state change goes through :meth:`Store.transaction`: the handler's writes,
the events it emits (the outbox) and, for consumers, the processed-event ledger
commit together or not at all.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from datetime import datetime, timedelta
from typing import Any, TypeVar

import pymongo
from bson import ObjectId
from crm_contracts import HANDOFF_BY_EVENT_TYPE, Envelope, Event, envelope_for, uuids
from crm_contracts.registry import model_for
from opentelemetry.context import Context
from pymongo import ASCENDING, AsyncMongoClient, ReplaceOne, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, OperationFailure
from pymongo.read_concern import ReadConcern
from pymongo.topology_description import TOPOLOGY_TYPE
from pymongo.write_concern import WriteConcern

from crm_platform import audit, cache, shredding, tracing
from crm_platform.batch import Batch
from crm_platform.clock import simulated_now
from crm_platform.deadline import request_db_deadline
from crm_platform.idempotency import claim_in, claims_now, only_duplicates_applied
from crm_platform.idempotency import ensure_indexes as ensure_idempotency_indexes
from crm_platform.logging import correlation_id_var, request_id_var
from crm_platform.money import TYPE_REGISTRY
from crm_platform.wakeups import align_pymongo_polls

log = logging.getLogger("crm.store")
T = TypeVar("T")
Doc = dict[str, Any]

OUTBOX = "outbox"
PROCESSED = "processed_events"
# Handoffs this service sent, tracked until their receipt arrives (crm_platform.receipts).
HANDOFFS_SENT = "handoffs_sent"

# The envelope being handled, so events emitted in reaction name it as their cause.
causation_var: ContextVar[Envelope | None] = ContextVar("causation", default=None)
# Awaited by a transaction just before it commits, when set: an import batch whose
# transaction runs beside the previous batch's waits there for that one to commit first
# (crm_platform.imports.worker), so batches commit in file order. Raising aborts it.
commit_after_var: ContextVar[Callable[[], Awaitable[None]] | None] = ContextVar("commit_after", default=None)


def connect(uri: str, app_name: str, *, timeout_seconds: float | None = None) -> AsyncMongoClient[Doc]:
    """The service's client. Decimal <-> Decimal128, so money is stored exactly (crm_platform.money).

    ``timeout_seconds`` (``CRM_DB_DEADLINE_SECONDS`` in services) is PyMongo's client-side
    operation timeout (CSOT, ``timeoutMS``): every operation, server selection included,
    gives up after it, and the server is sent the time left as ``maxTimeMS`` so it gives
    up too; the error becomes 503 + Retry-After at the HTTP edge. Whole transactions are
    bounded by the request's deadline in :meth:`Store.transaction`.
    """
    align_pymongo_polls()  # its half-second polls wake an idle process with its other waits
    options: dict[str, Any] = {"serverSelectionTimeoutMS": 5000}
    if timeout_seconds is not None:
        ms = max(1, int(timeout_seconds * 1000))
        options = {"timeoutMS": ms, "serverSelectionTimeoutMS": min(5000, ms)}
    return AsyncMongoClient(uri, tz_aware=True, appname=app_name, type_registry=TYPE_REGISTRY, **options)


class Tx:
    """One attempt of one transaction: the session plus the events to emit.

    ``db`` is the service's database as :class:`crm_platform.audit.AuditedDatabase`: every
    write made with ``session`` becomes an audit entry committed in this transaction.
    """

    def __init__(self, db: AsyncDatabase[Doc], session: AsyncClientSession, source: str) -> None:
        self.db = db
        self.session = session
        self.source = source
        # The configuration caches' invalidation count as this attempt begins, before its first
        # operation fixes its snapshot: what it loads into a cache is kept only if no cache
        # change came after (``TtlCache.get(since=...)``; a later one may not be in its snapshot).
        self.began = cache.invalidations()
        self.emitted: list[Envelope] = []
        # The trace context each event was emitted in (crm_platform.tracing; None when off).
        self.trace_contexts: list[Context | None] = []
        # Whether each event may share one outbox row with its neighbours (``emit(batched=True)``).
        self.batched: list[bool] = []
        # Called once the transaction has committed (never for an attempt that is retried
        # or aborted): e.g. dropping a cached configuration this transaction changed.
        self.after_commit: list[Callable[[], None]] = []
        # In a consumer: the events stored in this transaction (crm_platform.batch).
        self.batch: Batch | None = None
        # Every event emitted here may share an outbox row (``emit(batched=True)``): a
        # consumer's batch, whose receipts and effects' events are one row, not one per event.
        self.batch_emits = False
        # Set by a consumer: its batch rows carry it (``ROW_KEY``) and its ledger entries name
        # it, so a stored receipt is found from its handoff's ledger entry (receipts.confirm_again)
        # instead of through an index entry per receipt in every row.
        self.row_key: ObjectId | None = None
        # Deferred writes, each with the cause that queued it (audit.current_cause: the event of a
        # consumer's grouped transaction whose handler queued it; None outside one).
        self._later: dict[str, list[tuple[Doc, audit.Context | None]]] = {}
        self._later_updates: dict[str, list[tuple[UpdateOne | ReplaceOne[Doc], audit.Context | None]]] = {}
        # The outbox rows this attempt inserted (their ``_id`` set by the insert).
        self.stored_rows: list[Doc] = []
        # The person keys found before the emit (crm_platform.shredding.keys_ahead), by email hash.
        self.sealing_keys: dict[str, Any] = {}
        # No transaction (``Store.one_write``): a deferred insert is an insert where absent.
        self.outside_transaction = False
        # Set by a write that changes or deletes stored outbox rows (erasure's key rows:
        # crm_platform.shredding): its commit makes the relay read the pending rows before it
        # publishes a row handed to it (``CommittedRows.want_read``), so it sends what is stored.
        self.outbox_changed = False

    def insert_later(self, collection: str, doc: Doc) -> None:
        """Insert ``doc`` with the transaction's other deferred inserts: one ``insert_many``
        per collection before the commit (or at :meth:`flush_inserts`), audited as ONE entry
        naming every record of the insert (:func:`crm_platform.audit.one_entry_per_batch`).

        For a consumer's batch, where each event adds a record: one round trip instead of
        one per event. The caller reads that collection in this transaction only after
        :meth:`flush_inserts` (a query does not see documents still waiting here); a unique
        index refusing one fails the whole transaction, as ``insert_one`` would have. Its audit
        record names the cause being handled now (:func:`crm_platform.audit.caused_by`: in a
        consumer's grouped transaction, the event whose handler queued it), whenever it is written.
        """
        self._later.setdefault(collection, []).append((doc, audit.current_cause()))

    def update_later(self, collection: str, update: UpdateOne | ReplaceOne[Doc]) -> None:
        """Apply ``update`` (or a replacement) with the transaction's other deferred updates of
        ``collection``: one ordered ``bulk_write`` per collection before the commit (after the
        deferred inserts), or at :meth:`flush_inserts`. For a consumer's batch where each event
        changes a record it read through the batch (``crm_platform.batch``): one round trip,
        not one per event. Like :meth:`insert_later`, a read of that collection in this
        transaction sees the update only after :meth:`flush_inserts`. Audited as the cause being
        handled now, as :meth:`insert_later` is, and like its inserts as ONE entry per
        ``bulk_write`` naming each changed record with its changes and its own cause
        (:func:`crm_platform.audit.one_entry_per_batch`; one record: a plain entry)."""
        self._later_updates.setdefault(collection, []).append((update, audit.current_cause()))

    def deferred(self) -> bool:
        """Whether deferred writes wait (:meth:`insert_later`, :meth:`update_later`)."""
        return any(self._later.values()) or self.deferred_updates()

    def deferred_updates(self) -> bool:
        """Whether deferred updates wait (:meth:`update_later`)."""
        return any(self._later_updates.values())

    async def flush_inserts(self, collection: str | None = None, *, beside: bool = False) -> None:
        """Write the deferred inserts, then the deferred updates (of one ``collection``, or
        all) now. ``beside`` (the transaction has begun: a command of it was answered): the
        platform's collections (not audited: a consumer's learned hashes, its key copies) are
        written beside the audited ones, whose writes and entries keep their order."""
        names = (
            [collection]
            if collection is not None
            else list(dict.fromkeys([*self._later, *self._later_updates]))
        )
        platform = [n for n in names if n in audit.PLATFORM_COLLECTIONS]
        audited = [n for n in names if n not in audit.PLATFORM_COLLECTIONS]
        if beside and platform and audited:
            await side_by_side(self._flush(audited), self._flush(platform))
        else:
            await self._flush(names)

    async def _flush(self, names: list[str]) -> None:
        """The deferred inserts of ``names``, then their deferred updates, each in the order
        their collections were first deferred."""
        for name in [n for n in self._later if n in names]:
            queued = self._later.pop(name, None)
            if queued:
                docs = [doc for doc, _ in queued]
                if self.outside_transaction:
                    await _insert_absent(self.db[name], docs, self.session)
                    continue
                causes = _insert_causes(queued) if name not in audit.PLATFORM_COLLECTIONS else {}
                with audit.one_entry_per_batch(), audit.queued_by(causes):
                    await self.db[name].insert_many(docs, session=self.session)
        for name in [n for n in self._later_updates if n in names]:
            updates = self._later_updates.pop(name, None)
            audited = name not in audit.PLATFORM_COLLECTIONS
            for ops, by_record, cause in audit.queued_runs(updates or [], audited=audited):
                # One audit entry per run (per actor), each record with its own cause, as the
                # deferred inserts: a batch of 40 assignments wrote 40 entries (each 4-5 index
                # entries), one per handoff (docs/performance.md, thirteenth session, handoff).
                with audit.one_entry_per_batch(), audit.queued_by(by_record), audit.caused_by(cause):
                    await self.db[name].bulk_write(ops, ordered=True, session=self.session)

    def emit(
        self,
        event: Event,
        *,
        correlation_id: str | None = None,
        batched: bool = False,
        before: int | None = None,
    ) -> Envelope:
        """Store ``event`` in the outbox with this transaction.

        ``batched``: the event may share ONE outbox row with the batched events emitted next to
        it (:func:`outbox_rows`): a bulk capture or an import batch writes and marks one row
        instead of one per lead; in a consumer's batch every event does (``batch_emits``).
        Consumers still get one record per event, in order. A handoff shares a row only when
        its emitter asks (a tracker's batch of handoffs: one insert, relay mark and audit mark
        for the batch instead of one each per handoff); its ``handoffs_sent`` record names that
        row, and a re-send puts the handoff back alone (crm_platform.receipts). In a consumer's
        batch each handoff stays a row of its own. ``before``: stored ahead of the event
        emitted at that position (a key record ahead of the handoff it opens).
        """
        cause = causation_var.get()
        corr = correlation_id or (cause.correlation_id if cause else None)
        corr = corr or correlation_id_var.get() or event.partition_key()
        env = envelope_for(
            event,
            source=self.source,
            correlation_id=corr,
            causation_id=uuids.text(cause.event_id) if cause else None,
            occurred_at=simulated_now(),  # None (the real time) unless the demo clock set one
        )
        at = len(self.emitted) if before is None else before
        self.emitted.insert(at, env)
        self.trace_contexts.insert(at, tracing.capture())
        self.batched.insert(at, batched or (self.batch_emits and env.event_type not in HANDOFF_BY_EVENT_TYPE))
        return env


async def _insert_absent(
    collection: AsyncCollection[Doc], docs: list[Doc], session: AsyncClientSession
) -> None:
    """``docs`` inserted where their ``_id`` is absent, in one unordered insert (outside a
    transaction): a document already there refuses its copy, and only that is ignored."""
    try:
        await collection.insert_many(docs, ordered=False, session=session)
    except BulkWriteError as exc:
        if not only_duplicates_applied(exc):
            raise


def _insert_causes(queued: list[tuple[Doc, audit.Context | None]]) -> dict[str, audit.Context]:
    """Who queued each deferred insert, by ``str(_id)`` (a document without one is given its
    ObjectId now, as the driver would at the insert, so its cause can name it)."""
    causes: dict[str, audit.Context] = {}
    for doc, cause in queued:
        if cause is not None:
            if "_id" not in doc:  # not setdefault: an ObjectId made for nothing costs 1-2 us
                doc["_id"] = ObjectId()
            causes[str(doc["_id"])] = cause
    return causes


class Store:
    def __init__(self, client: AsyncMongoClient[Doc], database: str, source: str) -> None:
        self.client = client
        self.db: AsyncDatabase[Doc] = client[database]
        # ``one_write``'s: a write outside a transaction acknowledged as a commit is.
        self._majority = self.db.with_options(write_concern=WriteConcern("majority"))
        self.source = source
        self._on_commit: list[Callable[[], None]] = []
        # The batch rows committed here lately, for this process's relay (no read back).
        self.committed_rows = CommittedRows()

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Called after each transaction that emitted events, its rows handed to
        ``committed_rows`` first, and by :meth:`wake` (wakes the outbox relay)."""
        self._on_commit.append(callback)

    async def ensure_platform_indexes(self) -> None:
        await self.db[OUTBOX].create_index([("published", ASCENDING), ("_id", ASCENDING)], name="pending")
        await self.db[OUTBOX].create_index("event_id", unique=True, name="event_id")
        # The pending batch rows' event counts, read without fetching a row (outbox.pending_events).
        await self.db[OUTBOX].create_index(
            [("published", ASCENDING), ("count", ASCENDING)],
            name="pending_batches",
            partialFilterExpression={"count": {"$exists": True}},
        )
        # Published events are kept a week for forensics, then expire.
        await self.db[OUTBOX].create_index(
            "published_at", expireAfterSeconds=7 * 24 * 3600, name="published_ttl"
        )
        await ensure_idempotency_indexes(self.db)
        await audit.ensure_indexes(self.db)
        await tracing.ensure_indexes(self.db)

    async def transaction(self, work: Callable[[Tx], Awaitable[T]]) -> T:
        """Run ``work`` in a transaction, storing its emitted events in the outbox.

        PyMongo's ``with_transaction`` retries transient errors and unknown commit
        results; ``work`` may therefore run more than once and must only touch
        the database through ``tx.session``.
        """
        committed: list[Tx] = []  # the attempt that committed (with_transaction may retry)
        attempts: list[Tx] = []
        databases: list[audit.AuditedDatabase] = []  # each attempt's, released at the end
        journeys: dict[str, tracing.Carrier | None] = {}
        claims = claims_now()
        context = audit_context(self.source)

        async def attempt(session: AsyncClientSession) -> T:
            trail = audit.Trail(self.source, session, context)
            databases.append(audit.AuditedDatabase(self.db, trail))
            tx = Tx(databases[-1], session, self.source)
            attempts.append(tx)
            # The request's Idempotency-Key (a group's: each request's) commits with its effect
            # (crm_platform.idempotency).
            await claim_in(self.db, session, claims)
            result = await work(tx)
            journeys.update(await self._write_before_commit(tx, trail))
            if (wait := commit_after_var.get()) is not None:
                await wait()
            committed[:] = [tx]
            return result

        try:
            result = await self._with_transaction(attempt)
        finally:  # an attempt that did not commit takes back the rows it wrote
            self.committed_rows.discard(r for tx in attempts if tx not in committed for r in tx.stored_rows)
            for db in databases:  # freed by reference counting, not the cyclic collector
                db.release()
        for claim in claims:
            claim.committed = True
        if committed[0].outbox_changed:
            self.committed_rows.want_read()
        # Its rows to the relay, published without a read back (CommittedRows.hand).
        self.committed_rows.hand(committed[0].stored_rows)
        for hook in committed[0].after_commit:
            hook()
        if committed[0].emitted:
            # The relay first: its change stream leaves this process's rows to this wake-up
            # (CommittedRows.woken_here), and the journeys are a round trip it need not wait for.
            self._wake_callbacks()
            await tracing.remember_journeys(self.db, journeys)
        return result

    async def one_write(self, work: Callable[[Tx], Awaitable[T]]) -> T:
        """Run ``work``, whose every write is idempotent by itself, without a transaction: each
        write is acknowledged by the majority, as a commit is. A transaction of one write was the
        same write plus a commit and a transaction's Python (the key consumer's lone record, two
        mongod commands per sealed handoff; docs/performance.md, twentieth session, p99sales).
        ``tx.db`` is the plain database (no audit trail: only platform collections, which have
        none). Its deferred inserts (``Tx.insert_later``: a batch of key records) go at the end,
        each collection's as one unordered insert of the documents whose ``_id`` is absent: one
        already there is left as it is, so a batch written in part before a crash and delivered
        again ends the same (twenty-first session, drainkeys). ``work`` may emit nothing and defer
        no update (RuntimeError: it needed a transaction)."""
        with pymongo.timeout(request_db_deadline.get()):
            async with self.client.start_session() as session:
                tx = Tx(self._majority, session, self.source)
                tx.outside_transaction = True
                result = await work(tx)
                if tx.emitted or tx.deferred_updates():
                    raise RuntimeError("events or deferred updates outside a transaction: use transaction")
                await tx.flush_inserts()
        return result

    async def _with_transaction(self, attempt: Callable[[AsyncClientSession], Awaitable[T]]) -> T:
        """``attempt`` run by PyMongo's ``with_transaction``, under the request's deadline.

        In an HTTP request, one deadline for the whole transaction, retries and commit
        included (crm_platform.deadline): without it with_transaction keeps retrying
        transient errors for up to 120 s while the database is away. commitTransaction
        is sent with maxTimeMS = the time left, so the server aborts rather than commits
        late; only a commit already being applied when the deadline passes can still
        land, and an Idempotency-Key makes the client's retry of that request safe
        (crm_platform.idempotency).
        """
        with pymongo.timeout(request_db_deadline.get()):
            async with self.client.start_session() as session:
                return await session.with_transaction(
                    attempt,
                    read_concern=ReadConcern("snapshot"),
                    write_concern=WriteConcern("majority"),
                )

    async def _write_before_commit(self, tx: Tx, trail: audit.Trail) -> dict[str, tracing.Carrier]:
        """The attempt's deferred writes, its audit entries and its outbox rows; returns the
        journeys' trace contexts (:meth:`_store_emitted`). Once the transaction has begun (an
        audited write or the consumer's ledger insert answered), the writes that do not depend
        on each other go beside each other: mongod runs one command of a session at a time, the
        round trips between them are saved (docs/performance.md, nineteenth session, p99sales)."""
        begun = bool(trail.entries) or (tx.batch is not None and tx.batch.begun)
        begun = begun and commands_may_overlap(tx.session)
        await tx.flush_inserts(beside=begun)
        if begun and trail.entries and tx.emitted:  # no audited write among the outbox's
            journeys: dict[str, tracing.Carrier] = (
                await side_by_side(trail.flush(self.db), self._store_emitted(tx))
            )[1]
            return journeys
        await trail.flush(self.db)
        return await self._store_emitted(tx) if tx.emitted else {}

    async def _store_emitted(self, tx: Tx) -> dict[str, tracing.Carrier]:
        """The attempt's events into the outbox, each with the trace context it was caused in;
        returns the first context per journey. A handoff's ``handoffs_sent`` record is not
        written here: the relay writes it once the broker has the handoff, before it marks the
        row published (:func:`handoff_records`), one round trip fewer on a handoff's way."""
        # Personal data leaves in the sealed versions only (crm_platform.shredding).
        await shredding.seal_emitted(self.db, tx)
        items = [outbox_doc(env) for env in tx.emitted]
        emitted = zip(tx.emitted, items, tx.trace_contexts, strict=True)
        carriers = await tracing.outbox_contexts(
            self.db, tx.session, [(env, item["topic"], ctx) for env, item, ctx in emitted]
        )
        journeys: dict[str, tracing.Carrier] = {}
        for env, item, carrier in zip(tx.emitted, items, carriers, strict=True):
            if carrier:
                item[tracing.TRACE_FIELD] = carrier
                journeys.setdefault(env.correlation_id, carrier)
        rows = outbox_rows(items, tx.batched, tx.row_key)
        for row in rows:  # its commit wakes this process's relay: the change stream need not
            row[WRITER] = self.committed_rows.writer
        await self.db[OUTBOX].insert_many(rows, session=tx.session)
        tx.stored_rows = rows
        # Kept from now: the relay, woken by the change stream as the commit lands, may look
        # for them before this coroutine resumes after the commit.
        self.committed_rows.add(rows)
        return journeys

    def wake(self) -> None:
        """Tell the outbox relay that events wait that no commit handed it (a re-send put a
        row back): it reads the pending rows (``CommittedRows.want_read``)."""
        self.committed_rows.want_read()
        self._wake_callbacks()

    def _wake_callbacks(self) -> None:
        for callback in self._on_commit:
            callback()


def commands_may_overlap(session: AsyncClientSession) -> bool:
    """Whether a begun transaction's commands may be sent side by side (:func:`side_by_side`,
    ``Batch.preload``). The server runs one command of a session at a time and holds the next
    until the first is done, so on a replica set or through mongos only the round trip between
    them is saved. PyMongo documents a session as one operation at a time: in load-balanced
    mode it pins a transaction to ONE connection, which cannot carry two commands at once, so
    there they go one after the other, as before (docs/performance.md, nineteenth session)."""
    return session.client.topology_description.topology_type != TOPOLOGY_TYPE.LoadBalanced


async def side_by_side(*steps: Awaitable[Any]) -> list[Any]:
    """``steps`` (commands of one begun transaction) awaited together; when one fails, the
    others are cancelled and ended before its error is raised (none reaches the server after
    the transaction's abort)."""
    tasks = [asyncio.ensure_future(step) for step in steps]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


INDEX_NOT_FOUND = 27  # MongoDB's error code


async def drop_retired_indexes(collection: AsyncCollection[Doc], names: Iterable[str]) -> None:
    """Drop the indexes ``names`` that exist on ``collection``: ones a newer set of indexes
    serves, dropped at start-up. Another replica starting at the same moment may drop one
    first, which is fine."""
    existing = await collection.index_information()
    for name in names:
        if name in existing:
            try:
                await collection.drop_index(name)
            except OperationFailure as e:
                if e.code != INDEX_NOT_FOUND:
                    raise


def audit_context(service: str) -> audit.Context:
    """Who a transaction's changes are by: the request's user, else the event being handled,
    else the service itself (a schedule); with the request and correlation ids at hand."""
    cause = causation_var.get()
    user = audit.actor_var.get()
    if user is not None:
        actor = audit.user_actor(user)
    elif cause is not None:
        actor = audit.event_actor(cause.source, cause.event_type, uuids.text(cause.event_id))
    elif request_id_var.get() is not None:
        actor = audit.public_actor()  # a request without a token (a customer's survey answer)
    else:
        actor = audit.system_actor(service)
    operation = audit.operation_var.get()
    if operation is None and cause is not None:
        operation = f"event {cause.event_type} v{cause.schema_version}"
    correlation = correlation_id_var.get() or (cause.correlation_id if cause else None)
    return audit.Context(actor, operation, request_id_var.get(), correlation)


def outbox_doc(env: Envelope) -> Doc:
    # The envelope's JSON form from its serializer directly: ``model_dump(mode="json")`` is
    # that call with every option passed at its default, 0.9 us more per event (4.1 against
    # 3.2, a sealed lead.captured), and the id is the dumped string, not ``str(UUID)`` again.
    dumped = env.__pydantic_serializer__.to_python(env, mode="json")
    return {
        "event_id": dumped["event_id"],
        "event_type": env.event_type,
        "topic": model_for(env.event_type, env.schema_version).topic,
        "key": env.partition_key,
        "envelope": dumped,
        "published": False,
        "created_at": env.occurred_at,
    }


# A batch row (``emit(batched=True)``) holds its events' items under this field, in order.
BATCH_EVENTS = "events"
# A consumer transaction's batch rows: its key (``Tx.row_key``), which the ledger entry of each
# handoff it received names (crm_platform.receipts.RECEIPT_ROW).
ROW_KEY = "row_key"
# The pending batch rows (on the ``pending_batches`` index: their ``count`` without the rows).
PENDING_BATCHES = {"published": False, "count": {"$gt": 0}}  # a range: covered by the index


def outbox_rows(items: list[Doc], batched: list[bool], row_key: ObjectId | None = None) -> list[Doc]:
    """The outbox rows of a transaction's events (:func:`outbox_doc` each), in emission order.

    A run of two or more neighbouring batched events becomes ONE row listing them under
    ``events`` (one insert, one index entry set, one mark when published, one change-stream
    wake-up, instead of one of each per event); every other event is a row of its own, as
    before. The batch row's ``event_id`` is ``batch:`` + its first event's id (the unique
    index), its ``topic``/``event_type`` are its first event's, its ``key`` is null (each
    item has its own): :func:`row_items` reads either shape. ``row_key`` (a consumer's
    transaction, ``Tx.row_key``) is stored on each batch row as ``ROW_KEY``.
    """
    rows: list[Doc] = []
    run: list[Doc] = []

    def close_run() -> None:
        if len(run) == 1:
            rows.append(run[0])
        elif run:
            first = run[0]
            rows.append(
                {
                    "event_id": f"batch:{first['event_id']}",
                    "event_type": first["event_type"],
                    "topic": first["topic"],
                    "key": None,
                    BATCH_EVENTS: [{k: v for k, v in item.items() if k not in _ROW_ONLY} for item in run],
                    "count": len(run),
                    "published": False,
                    "created_at": first["created_at"],
                    **({} if row_key is None else {ROW_KEY: row_key}),
                }
            )
        run.clear()

    for item, joins in zip(items, batched, strict=True):
        if joins:
            run.append(item)
            continue
        close_run()
        rows.append(item)
    close_run()
    return rows


# The process that inserted a row through :meth:`Store.transaction` (``CommittedRows.writer``):
# its relay's change stream leaves that process's own inserts out on the server
# (crm_platform.outbox.OutboxRelay.watch_inserts).
WRITER = "writer"
_ROW_ONLY = frozenset({"published", "created_at"})


class CommittedRows:
    """The batch rows (:func:`outbox_rows`) this process committed lately, by ``_id``, as it
    wrote them: its outbox relay publishes them from here instead of reading each one (up to
    a thousand events) back from mongod right after writing it (docs/performance.md, ninth
    session, bulk). Kept from their insert (the relay, woken by the change stream as the
    commit lands, may look first); an attempt that does not commit takes its rows back, and
    the relay only looks for rows it read as pending. The stored row stays the truth: the
    relay takes a row from here only when its pending head has no field the written row
    lacks (a row handed back to the relay has some, and so has a row whose person-key records
    erasure zeroed: ``crm_platform.shredding.KEYS_ZEROED``), and each row once (a failed
    publish reads it again). A tracker's batch of handoffs, its keys in it, is not read back
    (about 3.5 KB per handoff read and decoded again before; docs/performance.md, sixteenth
    session, handoff). At most ``limit`` events are kept (the oldest rows go first).

    It also knows the ``_id`` of every row (batch or not) this process inserted lately
    (:meth:`woken_here`): the transaction that commits one wakes the relay itself
    (``Store.wake``), so the outbox's change stream need not wake it again for that insert
    (each such wake-up was a read of the pending rows that found nothing: two of the three
    reads per publish of a single handoff, thirteenth session, latency).

    **Handed rows** (:meth:`hand`, :meth:`take_handed`): every row a transaction committed, in
    commit order, for the relay to publish without reading the pending rows first (that read was
    one mongod round trip per commit on the handoff's way; docs/performance.md, twenty-sixth
    session, relayhop). The relay does so only while nothing else can be pending: no read is
    wanted (:meth:`want_read`: a row handed back, an erasure's change to stored rows, a hand-off
    dropped past ``limit``, a relay that was not publishing; the relay's own wake for a re-send
    or another writer's row) and its last read, within its sweep, found everything. A read
    takes over the rows handed before it began (:meth:`reading`: found by it if pending, else
    dropped: published or deleted); a row handed while a read ran wants the next read; a row a
    read published before its hand-off came is left out of the hand-off (:meth:`read`). The
    rows stay pending in mongod until marked, so a crash between commit and send loses nothing.
    """

    def __init__(self, limit: int = 4000, ids_limit: int = 10_000) -> None:
        # Written into each row this process inserts (``WRITER``): the relay's change stream
        # matches only other writers' inserts, so a commit here costs its relay no wake-up
        # round trip (one a handoff in each sending service, and mongod's getMore for it).
        self.writer = str(ObjectId())
        self.limit = limit
        self._rows: OrderedDict[Any, Doc] = OrderedDict()
        self._events = 0
        self.ids_limit = ids_limit
        self._ids: OrderedDict[Any, None] = OrderedDict()
        # Committed rows not yet published or taken over by a read, in commit order.
        self._handed: deque[Doc] = deque()
        self._handed_events = 0
        # Something besides the handed rows may be pending: the relay reads before publishing.
        self.read_wanted = True
        # Rows of this process a read published before their transaction handed them.
        self._read_ahead: OrderedDict[Any, None] = OrderedDict()

    def add(self, rows: Iterable[Doc]) -> None:
        for row in rows:
            if "_id" in row:
                self._ids[row["_id"]] = None
            items = row.get(BATCH_EVENTS)
            if items is None or "_id" not in row:
                continue
            self._rows[row["_id"]] = row
            self._events += len(items)
        while self._events > self.limit:
            self._events -= len(self._rows.popitem(last=False)[1][BATCH_EVENTS])
        while len(self._ids) > self.ids_limit:
            self._ids.popitem(last=False)

    def woken_here(self, row_id: Any) -> bool:
        """Whether the insert of ``row_id`` was this process's (its commit wakes the relay
        itself); each insert is answered once. An unknown row (another replica's, or one
        forgotten past ``ids_limit``) is not: the change stream wakes the relay for it."""
        return self._ids.pop(row_id, 0) is None

    def discard(self, rows: Iterable[Doc]) -> None:
        """Forget these rows (written by an attempt that did not commit)."""
        for row in rows:
            self._ids.pop(row.get("_id"), None)
            kept = self._rows.pop(row.get("_id"), None)
            if kept is not None:
                self._events -= len(kept[BATCH_EVENTS])

    def take(self, head: Doc) -> Doc | None:
        """The written row of this pending ``head`` (read without its events), or None: not
        committed here lately, or changed since (more fields than were written)."""
        row = self._rows.pop(head["_id"], None)
        if row is None:
            return None
        self._events -= len(row[BATCH_EVENTS])
        return row if head.keys() <= row.keys() else None

    def hand(self, rows: Iterable[Doc]) -> None:
        """The rows of a transaction that committed, for the relay (in commit order); one a
        read published already is left out. Past ``limit`` events they are dropped, and a read
        wanted: they are pending in mongod."""
        for row in rows:
            if self._read_ahead.pop(row["_id"], 0) is None:
                continue
            self._handed.append(row)
            self._handed_events += len(row_items(row))
        if self._handed_events > self.limit:
            self._drop_handed()
            self.read_wanted = True

    def want_read(self) -> None:
        """Rows besides the handed ones may be pending: the relay's next publish reads first."""
        self.read_wanted = True

    @property
    def handed(self) -> int:
        """How many handed rows wait."""
        return len(self._handed)

    def take_handed(self, events: int) -> list[Doc]:
        """The oldest handed rows holding about ``events`` events (at least one row), taken
        (and the batch rows among them out of :meth:`take`'s, published from here)."""
        taken: list[Doc] = []
        count = 0
        while self._handed:
            size = len(row_items(self._handed[0]))
            if taken and count + size > events:
                break
            row = self._handed.popleft()
            self._handed_events -= size
            kept = self._rows.pop(row["_id"], None)
            if kept is not None:
                self._events -= len(kept[BATCH_EVENTS])
            taken.append(row)
            count += size
        return taken

    def reading(self) -> set[Any]:
        """A read of the pending rows begins: it takes over the rows handed so far (it finds
        those still pending; the others were published or deleted). Returns their ids."""
        self.read_wanted = False
        covered = {row["_id"] for row in self._handed}
        self._drop_handed()
        return covered

    def read(self, heads: list[Doc], covered: set[Any], *, drained: bool) -> None:
        """A read (begun at :meth:`reading`, which returned ``covered``) found ``heads``. A row
        handed while it ran may have committed after its snapshot or changed before it: the next
        read is wanted, as it is when this one did not take every pending row. This process's
        rows it found that were not handed yet are left out of their hand-off."""
        if self._handed or not drained:
            self.read_wanted = True
        during = {row["_id"] for row in self._handed}
        for head in heads:
            if head.get(WRITER) == self.writer and head["_id"] not in covered and head["_id"] not in during:
                self._read_ahead[head["_id"]] = None
        while len(self._read_ahead) > self.ids_limit:
            self._read_ahead.popitem(last=False)

    def _drop_handed(self) -> None:
        self._handed.clear()
        self._handed_events = 0

    def clear(self) -> None:
        self._rows.clear()
        self._events = 0
        self._ids.clear()
        self._drop_handed()
        self._read_ahead.clear()
        self.read_wanted = True

    def __len__(self) -> int:
        return len(self._rows)


def row_items(row: Doc) -> list[Doc]:
    """The events of an outbox row: a batch row's items, or the row itself (one event)."""
    items: list[Doc] | None = row.get(BATCH_EVENTS)
    return items if items is not None else [row]


def outbox_events_pipeline(match: Doc) -> list[Doc]:
    """An aggregation over ``outbox`` giving one document per stored EVENT (a batch row's items
    unwound, a single row as it is) that matches ``match`` (e.g. ``{"event_type": ...,
    "key": ...}``): what tests and tools count instead of rows."""
    return [
        {"$project": {"item": {"$ifNull": [f"${BATCH_EVENTS}", ["$$ROOT"]]}, "published": 1}},
        {"$unwind": "$item"},
        {"$replaceRoot": {"newRoot": {"$mergeObjects": ["$item", {"published": "$published"}]}}},
        {"$match": match},
    ]


# When a handoff is first checked for its receipt, after it occurred (the runtime gives the
# relay CRM_HANDOFF_RESEND_AFTER_SECONDS).
RECEIPT_GRACE = timedelta(seconds=120)


def handoff_records(rows: Iterable[Doc], grace: timedelta = RECEIPT_GRACE) -> list[Doc]:
    """The ``handoffs_sent`` records of the handoffs in published outbox rows, pending until
    their receipt arrives (crm_platform.receipts). The relay writes them once the broker has
    acknowledged the rows and before it marks them published (``OutboxRelay._write_marks``):
    a handoff is tracked from its publish on, and a crash before its record leaves its row
    pending, published again and recorded then. Until its publish the outbox row itself is
    what guarantees it goes out. A handoff inside a batch row names that row (``row``: its
    ``event_id``), where its re-send finds it; one in a row of its own names none."""
    records: list[Doc] = []
    for row in rows:
        in_batch = row.get(BATCH_EVENTS) is not None
        for item in row_items(row):
            handoff = HANDOFF_BY_EVENT_TYPE.get(item["event_type"])
            if handoff is None:
                continue
            occurred = item.get("created_at") or _occurred_at(item)
            record = {
                "_id": item["event_id"],
                "handoff": handoff.name,
                "event_type": item["event_type"],
                "key": item["key"],
                "state": "pending",
                "created_at": occurred,
                "resends": 0,
                "next_check_at": occurred + grace,
            }
            if in_batch:
                record["row"] = row["event_id"]
            records.append(record)
    return records


def handoff_upserts(records: Iterable[Doc]) -> list[UpdateOne]:
    """:func:`handoff_records`' records as upserts that fill in the fields a record there
    already lacks and leave those it has (``$ifNull``, values as ``$literal``).

    With the marks gathered (``OutboxRelay``), a handoff's receipt mostly comes before its
    record, and the receipt listener makes the record, ``receipted``, with its state and
    ``receipted_at`` only (crm_platform.receipts.HandoffTracker.mark_receipted); an insert then
    found the id taken and left the record without its handoff, event type, key, time, re-sends
    and next check. Now the record ends the same whichever came first. A record the relay wrote
    before (a re-send published again, a mark that failed after its records) is left as it is."""
    return [
        UpdateOne(
            {"_id": record["_id"]},
            [{"$set": {f: {"$ifNull": [f"${f}", {"$literal": v}]} for f, v in record.items() if f != "_id"}}],
            upsert=True,
        )
        for record in records
    ]


def _occurred_at(item: Doc) -> datetime:
    """When the event of an outbox item occurred (a batch row's items keep no ``created_at``)."""
    return datetime.fromisoformat(str(item["envelope"]["occurred_at"]).replace("Z", "+00:00"))
