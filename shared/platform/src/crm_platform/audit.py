"""The audit log: every change to a service's records, written in the change's own transaction.

**Nobody can forget it.** :meth:`crm_platform.mongo.Store.transaction` gives ``work`` a
database (:class:`AuditedDatabase`) whose collections record every write made in the
transaction's session (``insert_one``, ``insert_many``, ``replace_one``, ``update_one``,
``update_many``, ``delete_one``, ``delete_many``, ``find_one_and_*``, ``bulk_write``) as an
:func:`entry`: who (the request's user, or the event that caused it, or the system), what
(the route or the event type, and insert / update / delete), which record (the collection
and the document's ``_id``), the fields that changed with their values before and after, the
request and correlation ids and the time. The entries are inserted into ``audit_log`` in the
same transaction as the change: no change commits without its entry, no entry without its
change. Repositories, handlers and consumers need do nothing.

What is not a record: the platform's own bookkeeping (outbox, ledger of processed events,
handoffs sent, idempotency keys, counters) and the audit log itself
(:data:`PLATFORM_COLLECTIONS`); a write made outside the transaction's session (a
round-robin turn taken on purpose outside it, a login's counted attempt) is not part of the
change and is not recorded. Secrets (:data:`REDACTED_FIELDS`, e.g. password hashes) are
recorded as changed, never with their value.

**Append-only.** This module is the only writer of ``audit_log`` and it only inserts; a
service's code that tries to write the collection through the transaction's database gets
:class:`AuditLogIsAppendOnly`. The one exception is erasure (:func:`erase_values`, called by
:func:`crm_platform.erasure.erase_person`): an erased person's values are replaced by
``[erased]`` in the before/after values of the erased records' entries, who/when/what kept.
(At the database level, give the services' MongoDB user a role with ``insert``, ``find`` and,
for erasure, ``update`` on ``audit_log``, never ``remove``: deploy/README.md.)

The read side: :func:`query` (per user, record type, record, period; newest first, keyset
cursor over the ``(at, _id)`` order, each filter backed by an index from
:func:`ensure_indexes`), :func:`csv_rows` (the same filters, streamed) and :func:`history`
(one record's field changes, for ``GET /<records>/{id}/history``).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from bson import Decimal128, ObjectId
from pymongo import ASCENDING, DESCENDING, DeleteMany, DeleteOne, InsertOne, ReplaceOne, UpdateMany, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.collection import ReturnDocument

from crm_platform.actor import Actor
from crm_platform.clock import now_millis
from crm_platform.ids import new_id
from crm_platform.paging import Sort, page

Doc = dict[str, Any]

AUDIT_LOG = "audit_log"
# The platform's bookkeeping collections: never records (crm_platform.mongo, idempotency, counters).
PLATFORM_COLLECTIONS = frozenset(
    # person_keys: the per-person data keys (crm_platform.shredding) never go into the log;
    # erasure_rechecks: the requests to match again (crm_platform.erasure.RECHECKS)
    {
        AUDIT_LOG,
        "outbox",
        "processed_events",
        "handoffs_sent",
        "idempotency_keys",
        "counters",
        "person_keys",
        "erasure_rechecks",
    }
)
# Recorded as changed ("[redacted]" before and after), never with their value.
REDACTED_FIELDS = frozenset({"password_hash", "password", "secret", "token", "token_hash"})
REDACTED = "[redacted]"
# Fields a store derives from a record's other fields only to index them (leads' list_keys):
# no one changes them, so no entry lists them (:func:`derived_field`).
DERIVED_FIELDS: set[str] = set()
# Collections whose batch-inserted records an entry names without a copy of their values
# (:func:`inserts_named`): the read side takes them from the stored record (:func:`with_values`).
NAMED_INSERTS: set[str] = set()
# A batch insert entry whose records carry no ``after``: their values are the stored records'
# with every later entry's changes undone (:func:`with_values`), not a copy.
NAMED = "named"

INSERT, UPDATE, DELETE = "insert", "update", "delete"

# Set for each authenticated request (crm_platform.auth.current_principal): who acts, and the route.
actor_var: ContextVar[Actor | None] = ContextVar("audit_actor", default=None)
operation_var: ContextVar[str | None] = ContextVar("audit_operation", default=None)
# Set by :func:`one_entry_per_batch` around a bulk path's ``insert_many``.
batch_entries_var: ContextVar[bool] = ContextVar("audit_batch_entries", default=False)

# Whose change each record is, when one transaction holds several requests' changes (leads'
# grouped captures): ``str(_id) -> Context``. Set by :func:`records_by`.
record_contexts_var: ContextVar[Mapping[str, Context] | None] = ContextVar(
    "audit_record_contexts", default=None
)


# Whose change a write made now is, when one transaction holds several events' changes (a
# consumer's grouped transaction, ``EventConsumer._store_group``): each event's own
# :class:`Context`, set around its handler (:func:`caused_by`) and read as each entry is made
# (:meth:`Trail.context_of`), so the transaction's context (taken when it begins, before any
# event's) names only what no event caused.
cause_var: ContextVar[Context | None] = ContextVar("audit_cause", default=None)
# While a transaction's deferred writes are written (``Tx.insert_later``/``update_later``):
# ``str(_id) -> Context`` of the cause that queued each record's write (:func:`queued_by`).
queued_by_var: ContextVar[Mapping[str, Context] | None] = ContextVar("audit_queued_by", default=None)


def _record_contexts() -> Mapping[str, Context]:
    """The mapping :func:`records_by` set (the same object: it is filled as the work runs)."""
    contexts = record_contexts_var.get()
    return {} if contexts is None else contexts


# A batch entry's records (``{id, after}`` each for inserts, ``{id, changes}`` for updates, in the
# order written); at most this many per entry.
RECORDS = "records"
BATCH_ENTRY_RECORDS = 250


@contextmanager
def _bound(var: ContextVar[Any], value: Any) -> Iterator[None]:
    """``var`` set to ``value`` inside, its previous value back after."""
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


@contextmanager
def one_entry_per_batch() -> Iterator[None]:
    """Inserts of many records made inside are recorded as ONE entry per batch (of at most
    :data:`BATCH_ENTRY_RECORDS` records) instead of one entry per record; so are the updates
    of many records by one ``bulk_write`` (``records: [{id, changes}]``: each record's fields
    before and after, as its own entry would list them; :meth:`Trail.record_updates`).

    For the bulk paths (an import batch, a bulk capture): each record is still named
    (``record.id`` lists every id, so the ``by_record`` index and the per-record query find
    it) with its own after-values (``records: [{id, after}]``: the fields it set), and the entry has the
    same actor, action, operation, request and correlation ids and time as the per-record
    entries would (one entry per actor; a record whose cause is not the entry's, one event
    of a consumer's grouped transaction, carries its own: :func:`with_cause`). The read side
    (:func:`query`, :func:`history`, :func:`csv_rows`) shows it as one entry per record
    (:func:`entries_of`). What it saves: one audit document and its four index entries per
    record (docs/performance.md, "Sixth session").
    """
    with _bound(batch_entries_var, True):
        yield


@contextmanager
def records_by(contexts: Mapping[str, Context]) -> Iterator[None]:
    """Entries for the records named in ``contexts`` (by ``str(_id)``: ids are unique) name that
    record's own :class:`Context` (who, what, request and correlation ids) instead of the
    transaction's: several requests' changes stored in ONE transaction (a group commit) keep
    one entry each, by their own request. ``contexts`` may be filled while the transaction
    runs (a record's id is known only once it is made); it is read when an entry is written.
    """
    with _bound(record_contexts_var, contexts):
        yield


@contextmanager
def caused_by(context: Context | None) -> Iterator[None]:
    """Writes made inside are ``context``'s changes (one event of a grouped transaction);
    None changes nothing (the transaction's context, or an outer cause, stays)."""
    if context is None:
        yield
        return
    with _bound(cause_var, context):
        yield


@contextmanager
def queued_by(contexts: Mapping[str, Context]) -> Iterator[None]:
    """Entries for the records named in ``contexts`` (``str(_id)``) name that record's cause:
    deferred writes (``Tx.flush_inserts``) written after, or inside another event's handler
    than, the event that queued them. Empty: nothing changes."""
    if not contexts:
        yield
        return
    with _bound(queued_by_var, contexts):
        yield


def current_cause() -> Context | None:
    """The cause set now (:func:`caused_by`): what ``Tx.insert_later`` keeps with a deferred write."""
    return cause_var.get()


class AuditLogIsAppendOnly(RuntimeError):
    """A service's code tried to change or delete audit entries."""


@dataclass(frozen=True)
class Context:
    """Who and what a transaction's entries name (resolved once, when the transaction starts)."""

    actor: Doc
    operation: str | None
    request_id: str | None
    correlation_id: str | None


def user_actor(actor: Actor) -> Doc:
    roles = sorted(actor.roles)
    return {"type": "user", "user_id": actor.user_id, "username": actor.username, "roles": roles}


def event_actor(source: str, event_type: str, event_id: str) -> Doc:
    """A change made by a handoff or another event: its sender is the actor."""
    return {"type": "event", "user_id": f"event:{source}", "source": source, "event_type": event_type,
            "event_id": event_id}  # fmt: skip


def public_actor() -> Doc:
    return {"type": "public", "user_id": "public"}


def system_actor(service: str) -> Doc:
    """A change the service makes by itself (a schedule, an escalation, seeding)."""
    return {"type": "system", "user_id": f"system:{service}"}


@dataclass
class Trail:
    """The entries of one transaction attempt, and the documents it read (the 'before' states)."""

    service: str
    session: AsyncClientSession
    context: Context
    excluded: frozenset[str] = PLATFORM_COLLECTIONS
    entries: list[Doc] = field(default_factory=list)
    seen: dict[tuple[str, Any], Doc] = field(default_factory=dict)
    #: Entries are ``<id>.<position>``: within one millisecond, the ``(at, _id)`` order the log is
    #: read in is the order the transaction wrote in (a random id each would shuffle a delete
    #: before the update it followed).
    id_prefix: str = field(default_factory=new_id)
    last_at: datetime | None = None
    #: Records whose entries name their own context (:func:`records_by`), read as entries are made.
    record_contexts: Mapping[str, Context] = field(default_factory=lambda: _record_contexts())

    def context_of(self, collection: str, doc_id: Any) -> Context:
        """Whose change the record is: its own context (:func:`records_by`), else the cause that
        queued its deferred write (:func:`queued_by`), else the cause being handled
        (:func:`caused_by`), else the transaction's."""
        if self.record_contexts and (own := self.record_contexts.get(str(doc_id))) is not None:
            return own
        queued = queued_by_var.get()
        if queued and (own := queued.get(str(doc_id))) is not None:
            return own
        return cause_var.get() or self.context

    def watches(self, collection: str, session: object) -> bool:
        return session is self.session and collection not in self.excluded

    def remember(self, collection: str, doc: Doc | None) -> None:
        if doc is not None and "_id" in doc:
            self.seen[(collection, doc["_id"])] = copy_doc(doc)

    def known(self, collection: str, doc_id: Any) -> Doc | None:
        return self.seen.get((collection, doc_id))

    async def flush(self, db: AsyncDatabase[Doc]) -> None:
        """Insert the entries in the transaction (``db`` the plain database: the only writer)."""
        if self.entries:
            await db[AUDIT_LOG].insert_many(self.entries, session=self.session)

    def record_inserts(self, collection: str, docs: Sequence[Doc]) -> None:
        """Batch entries for inserted records (:func:`one_entry_per_batch`): each record's
        fields as set (``after``; null ones left out, secrets redacted), from which the read
        side lists its changes as :func:`diff` would (:func:`entries_of`). Not remembered as
        'before' states: a bulk path does not write its new records twice in a transaction
        (a later write would read the record instead). One batch per actor (the ``by_user``
        index finds it); a record whose cause differs from its batch's names its own
        (:func:`with_cause`); an actor's one record among others' is a plain entry."""
        by_actor: dict[Any, list[tuple[Context, Doc]]] = {}
        for doc in docs:
            ctx = self.context_of(collection, doc["_id"])
            by_actor.setdefault(ctx.actor.get("user_id"), []).append((ctx, doc))
        for group in by_actor.values():
            if len(group) == 1 and len(by_actor) > 1:
                self.record(collection, None, group[0][1])  # one actor's one record: a plain entry
                continue
            named = collection in NAMED_INSERTS  # ids only: the read side takes the values (with_values)
            records = [
                (ctx, {"id": str(doc["_id"])} if named else inserted_record(doc)) for ctx, doc in group
            ]
            self._batches(collection, INSERT, records, named=named)

    def record_updates(self, collection: str, pairs: Sequence[tuple[Doc, Doc]]) -> None:
        """Batch entries for records one write updated together (:func:`one_entry_per_batch`
        around a ``bulk_write``): per actor, ONE ``update`` entry naming every record
        (``record.id``) with its own changes (``records: [{id, changes}]``, :func:`diff`'s)
        and, where it differs from the batch's, its own cause (:func:`with_cause`), which the
        read side shows as one entry per record (:func:`entries_of`); an actor with one
        changed record gets a plain entry. A save that changed nothing is no entry; each
        state after is remembered as the 'before' of a later write, as :meth:`record` does."""
        by_actor: dict[Any, list[tuple[Context, Doc]]] = {}
        for before, after in pairs:
            self.remember(collection, after)
            changes = diff(before, after)
            if changes:
                ctx = self.context_of(collection, after["_id"])
                by_actor.setdefault(ctx.actor.get("user_id"), []).append(
                    (ctx, {"id": after["_id"], "changes": changes})
                )
        for group in by_actor.values():
            if len(group) == 1:
                ctx, only = group[0]
                self.entries.append(entry(self, collection, only["id"], UPDATE, only["changes"], ctx))
                continue
            records = [(ctx, {"id": str(r["id"]), "changes": r["changes"]}) for ctx, r in group]
            self._batches(collection, UPDATE, records)

    def _batches(
        self, collection: str, action: str, records: Sequence[tuple[Context, Doc]], *, named: bool = False
    ) -> None:
        """Entries of at most :data:`BATCH_ENTRY_RECORDS` records each (one actor's): the entry
        names its first record's context, each record its own where that differs; ``named``:
        inserted records without their values (:data:`NAMED`)."""
        for start in range(0, len(records), BATCH_ENTRY_RECORDS):
            chunk = records[start : start + BATCH_ENTRY_RECORDS]
            first = chunk[0][0]
            batch = entry(self, collection, None, action, [], first)
            del batch["changes"]  # each record's are in ``records``
            batch["record"]["id"] = [r["id"] for _, r in chunk]
            batch[RECORDS] = [with_cause(r, ctx, first) for ctx, r in chunk]
            if named:
                batch[NAMED] = True
            self.entries.append(batch)

    def record(self, collection: str, before: Doc | None, after: Doc | None) -> None:
        changes = diff(before, after)
        if before is not None and after is not None and not changes:
            return  # a save that changed nothing is not a change
        doc_id = (after if after is not None else before or {}).get("_id")
        action = INSERT if before is None else DELETE if after is None else UPDATE
        self.entries.append(entry(self, collection, doc_id, action, changes))
        if after is not None:
            self.remember(collection, after)
        else:
            self.seen.pop((collection, doc_id), None)


# What a batch entry's record may carry of its own cause, when it is not the batch's (a
# consumer's grouped transaction: each record's event, operation and journey).
CAUSE_FIELDS = ("actor", "operation", "request_id", "correlation_id")


def with_cause(record: Doc, context: Context, batch: Context) -> Doc:
    """``record`` (a batch entry's) with the fields of its own ``context`` that differ from
    the ``batch`` entry's context (:data:`CAUSE_FIELDS`): read back as its entry's
    (:func:`entries_of`)."""
    if context is not batch:
        for name in CAUSE_FIELDS:
            value = getattr(context, name)
            if value != getattr(batch, name):
                record[name] = value
    return record


def inserted_record(doc: Mapping[str, Any]) -> Doc:
    """A batch insert entry's record: its id and the fields it set (:func:`inserted_fields`)."""
    return {"id": str(doc["_id"]), "after": inserted_fields(doc)}


def inserted_fields(doc: Mapping[str, Any]) -> Doc:
    """The fields an insert sets, as a batch entry keeps them: null ones and ``_id`` left out,
    secrets redacted (``diff(None, {"_id": ..., **inserted_fields(doc)})`` is ``diff(None, doc)``)."""
    return {
        name: REDACTED if name in REDACTED_FIELDS else value
        for name, value in doc.items()
        if value is not None and name != "_id"
    }


def entry(
    trail: Trail,
    collection: str,
    doc_id: Any,
    action: str,
    changes: list[Doc],
    context: Context | None = None,
) -> Doc:
    ctx = context or trail.context_of(collection, doc_id)
    now = now_millis()
    trail.last_at = now if trail.last_at is None else max(trail.last_at, now)  # never before the last
    return {
        "_id": f"{trail.id_prefix}.{len(trail.entries):04d}",
        "at": trail.last_at,
        "service": trail.service,
        "actor": ctx.actor,
        "action": action,
        "operation": ctx.operation,
        "record": {"type": collection, "id": str(doc_id)},
        "changes": changes,
        "request_id": ctx.request_id,
        "correlation_id": ctx.correlation_id,
    }


_MISSING = object()


def copy_doc(doc: Mapping[str, Any]) -> Doc:
    """A deep copy of a stored document: dicts and lists copied, BSON scalars (str, numbers,
    datetimes, ObjectId, Decimal128, bytes) shared; anything else by ``copy.deepcopy``.

    ``copy.deepcopy`` would do, at five times the cost on every record a transaction writes.
    """
    return {name: value if type(value) in _SHARED else _copy(value) for name, value in doc.items()}


def _copy(value: Any) -> Any:
    kind = type(value)
    if kind is dict:
        return copy_doc(value)
    if kind is list:
        return [v if type(v) in _SHARED else _copy(v) for v in value]
    return value if kind in _SHARED else copy.deepcopy(value)


_SHARED = frozenset({str, int, float, bool, type(None), datetime, ObjectId, Decimal128, Decimal, bytes})


def derived_field(name: str) -> None:
    """Leave the field ``name`` out of every entry's changes in this process: a field the store
    derives from the record's other fields for its indexes, whose change the history already
    tells by theirs (a user reading a lead's history sees its rep, not an index key)."""
    DERIVED_FIELDS.add(name)


def inserts_named(collection: str) -> None:
    """Batch entries of records inserted into ``collection`` (:func:`one_entry_per_batch`) name
    each record without copying its values (:data:`NAMED`); the read side takes them from the
    stored record with every later entry's changes undone (:func:`with_values`), so each record
    reads back as a copy would have shown it. Only for a collection whose records have string
    ids, are new at insert (an id never used before) and are written only in audited
    transactions (an unaudited write would change what the insert reads back as): sales'
    inbox, whose item copies were the largest part of its audit entries (the inserted handoff
    whole), and leads' behaviours (docs/performance.md, fourteenth session, handoff)."""
    NAMED_INSERTS.add(collection)


def diff(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> list[Doc]:
    """The top-level fields that differ, ``[{field, before, after}]`` (``_id`` and
    :data:`DERIVED_FIELDS` left out).

    A field missing and a field set to null are the same ("not set"): an insert lists the
    fields it sets, a delete the fields the record had.
    """
    if before is None and after is not None:  # an insert: every field it sets (null sets nothing)
        return [
            {"field": name, "before": None, "after": REDACTED if name in REDACTED_FIELDS else value}
            for name, value in sorted(after.items())
            if value is not None and name != "_id" and name not in DERIVED_FIELDS
        ]
    old, new = before or {}, after or {}
    changes: list[Doc] = []
    for name in sorted(set(old) | set(new)):
        if name == "_id" or name in DERIVED_FIELDS:
            continue
        was, now = old.get(name, _MISSING), new.get(name, _MISSING)
        if was == now or _value(was) is _value(now) is None:  # missing and null are both "not set"
            continue
        if name in REDACTED_FIELDS:
            was, now = _redact(was), _redact(now)
        changes.append({"field": name, "before": _value(was), "after": _value(now)})
    return changes


def _redact(value: object) -> object:
    return value if value is _MISSING else REDACTED


def _value(value: object) -> object:
    return None if value is _MISSING else value


class AuditedDatabase(AsyncDatabase[Doc]):
    """The transaction's database: the same database, whose collections record their writes."""

    def __init__(self, db: AsyncDatabase[Doc], trail: Trail) -> None:
        options = (db.codec_options, db.read_preference, db.write_concern, db.read_concern)
        super().__init__(db.client, db.name, *options)
        self._trail = trail
        # One collection object per name for the transaction: building one costs more than
        # many a round trip's encoding, and a consumer's batch asks for the same few per event.
        self._collections: dict[str, AuditedCollection] = {}

    def __getitem__(self, name: str) -> AsyncCollection[Doc]:
        collection = self._collections.get(name)
        if collection is None:
            collection = self._collections[name] = AuditedCollection(self, name, self._trail)
        return collection

    def get_collection(self, name: str, *args: Any, **kwargs: Any) -> AsyncCollection[Doc]:
        return AuditedCollection(self, name, self._trail, *args, **kwargs)

    def release(self) -> None:
        """Forget the transaction's collection objects, once it has ended (``Store.transaction``).

        Each one holds this database, which holds them: a reference cycle that kept the trail
        and every document the transaction wrote (a 500-lead bulk batch's leads and audit
        entries: about 0.9 MB) alive until the cyclic collector's next full collection, which
        runs only every few hundred thousand allocations (``crm_platform.app.GC_YOUNG_THRESHOLD``);
        with that garbage waiting, leads' peak RSS under the bench's 20,000 bulk leads was
        about 25 MB higher (docs/performance.md, tenth session, rss). Released, reference
        counting frees them when the transaction's last reference goes."""
        self._collections.clear()


def _set_on_insert_only(filter: Any, change: Any, kwargs: Mapping[str, Any]) -> Doc | None:
    """The document an upsert whose update is only ``$setOnInsert`` (with an ``_id``) inserts
    when nothing matches: the filter's plain equality fields, then the ``$setOnInsert`` fields.
    None for any other write (its after-state is read back)."""
    if not kwargs.get("upsert") or not isinstance(change, Mapping) or list(change) != ["$setOnInsert"]:
        return None
    fields = change["$setOnInsert"]
    if not isinstance(filter, Mapping) or not isinstance(fields, Mapping):
        return None
    plain = {k: v for k, v in filter.items() if not k.startswith("$") and "." not in k and not _operator(v)}
    if len(plain) != len(filter) or any(k in fields and fields[k] != v for k, v in plain.items()):
        return None  # operators or dotted paths in the filter: the stored document is read back
    doc = {**plain, **fields}
    return doc if "_id" in doc else None


def _operator(value: Any) -> bool:
    return isinstance(value, Mapping) and any(str(k).startswith("$") for k in value)


class AuditedCollection(AsyncCollection[Doc]):
    """A collection whose writes in the trail's session become audit entries (module docstring).

    Why so many overrides: each write method of PyMongo's collection is one way a
    repository can change a record; every one of them is covered, so none bypasses the log.
    """

    def __init__(self, db: AsyncDatabase[Doc], name: str, trail: Trail, *args: Any, **kwargs: Any) -> None:
        super().__init__(db, name, False, *args, **kwargs)
        self._trail = trail

    def _watched(self, kwargs: Mapping[str, Any]) -> bool:
        if self.name == AUDIT_LOG:
            raise AuditLogIsAppendOnly("only crm_platform.audit writes audit entries, and never changes them")
        return self._trail.watches(self.name, kwargs.get("session"))

    async def find_one(self, filter: Any = None, *args: Any, **kwargs: Any) -> Doc | None:
        doc = await super().find_one(filter, *args, **kwargs)
        if self._trail.watches(self.name, kwargs.get("session")) and not args and "projection" not in kwargs:
            self._trail.remember(self.name, doc)
        return doc

    def known(self, doc_id: Any, session: Any) -> Doc | None:
        """The record as this transaction last saw it (read to change, or written), a copy of its
        own; None when it has not: what a save can write only the changed fields of."""
        return self._trail.known(self.name, doc_id) if self._trail.watches(self.name, session) else None

    async def find_to_change(self, filter: Any, *, session: Any) -> list[Doc]:
        """``find(filter)``'s documents, each remembered as its state before this transaction
        changes it (as :meth:`find_one` does for one): a batch read of records the
        transaction then saves one by one, with no second read per save."""
        docs = [d async for d in super().find(filter, session=session)]
        if self._trail.watches(self.name, session):
            for doc in docs:
                self._trail.remember(self.name, doc)
        return docs

    async def _before(self, filter: Mapping[str, Any], session: Any) -> Doc | None:
        doc_id = filter.get("_id") if len(filter) == 1 else None
        if doc_id is not None and not isinstance(doc_id, dict):
            cached = self._trail.known(self.name, doc_id)
            if cached is not None:
                return cached
        return await super().find_one(filter, session=session)

    async def _by_ids(self, ids: Sequence[Any], session: Any) -> dict[Any, Doc]:
        if not ids:
            return {}
        return {d["_id"]: d async for d in super().find({"_id": {"$in": list(ids)}}, session=session)}

    async def insert_one(self, document: Any, *args: Any, **kwargs: Any) -> Any:
        result = await super().insert_one(document, *args, **kwargs)
        if self._watched(kwargs):
            self._trail.record(self.name, None, dict(document))
        return result

    async def insert_many(self, documents: Iterable[Any], *args: Any, **kwargs: Any) -> Any:
        docs = list(documents)
        result = await super().insert_many(docs, *args, **kwargs)
        if self._watched(kwargs):
            if batch_entries_var.get() and len(docs) > 1:
                self._trail.record_inserts(self.name, [dict(doc) for doc in docs])
            else:
                for doc in docs:
                    self._trail.record(self.name, None, dict(doc))
        return result

    async def replace_one(self, filter: Any, replacement: Any, *args: Any, **kwargs: Any) -> Any:
        if not self._watched(kwargs):
            return await super().replace_one(filter, replacement, *args, **kwargs)
        before = await self._before(filter, kwargs.get("session"))
        result = await super().replace_one(filter, replacement, *args, **kwargs)
        doc_id = before["_id"] if before is not None else result.upserted_id
        if doc_id is not None:
            self._trail.record(self.name, before, {"_id": doc_id, **dict(replacement)})
        return result

    async def update_one(self, filter: Any, update: Any, *args: Any, **kwargs: Any) -> Any:
        if not self._watched(kwargs):
            return await super().update_one(filter, update, *args, **kwargs)
        session = kwargs.get("session")
        before = await self._before(filter, session)
        result = await super().update_one(filter, update, *args, **kwargs)
        doc_id = before["_id"] if before is not None else result.upserted_id
        if doc_id is not None:
            self._trail.record(self.name, before, await super().find_one({"_id": doc_id}, session=session))
        return result

    async def update_many(self, filter: Any, update: Any, *args: Any, **kwargs: Any) -> Any:
        if not self._watched(kwargs):
            return await super().update_many(filter, update, *args, **kwargs)
        session = kwargs.get("session")
        befores = {d["_id"]: d async for d in super().find(filter, session=session)}
        result = await super().update_many(filter, update, *args, **kwargs)
        ids = [*befores, *([result.upserted_id] if result.upserted_id is not None else [])]
        afters = await self._by_ids(ids, session)
        for doc_id in ids:
            self._trail.record(self.name, befores.get(doc_id), afters.get(doc_id))
        return result

    async def delete_one(self, filter: Any, *args: Any, **kwargs: Any) -> Any:
        if not self._watched(kwargs):
            return await super().delete_one(filter, *args, **kwargs)
        before = await self._before(filter, kwargs.get("session"))
        result = await super().delete_one(filter, *args, **kwargs)
        if before is not None and result.deleted_count:
            self._trail.record(self.name, before, None)
        return result

    async def delete_many(self, filter: Any, *args: Any, **kwargs: Any) -> Any:
        if not self._watched(kwargs):
            return await super().delete_many(filter, *args, **kwargs)
        befores = [d async for d in super().find(filter, session=kwargs.get("session"))]
        result = await super().delete_many(filter, *args, **kwargs)
        for before in befores:
            self._trail.record(self.name, before, None)
        return result

    async def find_one_and_update(self, filter: Any, update: Any, *args: Any, **kwargs: Any) -> Any:
        return await self._audited_change("update", filter, update, args, kwargs)

    async def find_one_and_replace(self, filter: Any, replacement: Any, *args: Any, **kwargs: Any) -> Any:
        return await self._audited_change("replace", filter, replacement, args, kwargs)

    async def find_one_and_delete(self, filter: Any, *args: Any, **kwargs: Any) -> Any:
        return await self._audited_change("delete", filter, None, args, kwargs)

    async def _audited_change(
        self, kind: str, filter: Any, change: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        call: dict[str, Callable[..., Awaitable[Any]]] = {
            "update": super().find_one_and_update,
            "replace": super().find_one_and_replace,
        }
        if not self._watched(kwargs):
            if kind == "delete":
                return await super().find_one_and_delete(filter, *args, **kwargs)
            return await call[kind](filter, change, *args, **kwargs)
        if args or "projection" in kwargs:
            raise TypeError("audited find_one_and_*: pass options by keyword, without a projection")
        session = kwargs.get("session")
        if kind == "delete":
            before = await super().find_one_and_delete(filter, **kwargs)
            if before is not None:
                self._trail.record(self.name, before, None)
            return before
        wanted = kwargs.pop("return_document", ReturnDocument.BEFORE)
        if kind == "update" and (inserted := _set_on_insert_only(filter, change, kwargs)) is not None:
            return await self._insert_unless_found(filter, change, inserted, wanted, kwargs)
        before = await call[kind](filter, change, return_document=ReturnDocument.BEFORE, **kwargs)
        if before is None and not kwargs.get("upsert"):
            return None  # nothing matched: nothing changed, nothing to read
        doc_id = before["_id"] if before is not None else None
        # An update that only sets and removes top-level fields leaves ``before`` so changed
        # (_fields_set): no read after it (leads' assignment of a lead it handed to sales in one
        # round trip, docs/performance.md, nineteenth session, p99leads).
        after = _fields_set(before, change) if kind == "update" else None
        if after is None:
            after = await super().find_one({"_id": doc_id} if doc_id is not None else filter, session=session)
        if after is not None:
            self._trail.record(self.name, before, after)
        return after if wanted == ReturnDocument.AFTER else before

    async def _insert_unless_found(
        self, filter: Any, change: Any, inserted: Doc, wanted: Any, kwargs: dict[str, Any]
    ) -> Any:
        """An upsert that only sets fields on insert (``$setOnInsert``): a matched document is
        left unchanged (no entry; remembered as the 'before' of a later write), else the
        inserted document is exactly ``inserted``: audited as an insert with no read after it."""
        before = await super().find_one_and_update(
            filter, change, return_document=ReturnDocument.BEFORE, **kwargs
        )
        if before is not None:
            self._trail.remember(self.name, before)
            return before
        self._trail.record(self.name, None, inserted)
        return inserted if wanted == ReturnDocument.AFTER else None

    async def bulk_write(self, requests: Sequence[Any], *args: Any, **kwargs: Any) -> Any:
        """Every operation kind: one entry per document touched, from its state before the batch
        to its state after it (an import's merges and upserts). The states before are read
        around the write unless this transaction read them already (:meth:`find_to_change`);
        a batch of whole-document writes by ``_id`` (:func:`_written`) is its own state after,
        as for :meth:`replace_one`; any other batch is read again after the write."""
        if not self._watched(kwargs):
            return await super().bulk_write(requests, *args, **kwargs)
        session, ops = kwargs.get("session"), list(requests)
        ids: list[Any] = []
        for op in ops:
            ids += await self._targets(op, session)
        befores = await self._known_or_read(ids, session)
        result = await super().bulk_write(ops, *args, **kwargs)
        ids += [op._doc["_id"] for op in ops if isinstance(op, InsertOne)]
        ids += list((result.upserted_ids or {}).values())
        written = _written(ops, befores)
        afters = written if written is not None else await self._by_ids(ids, session)
        updated: list[tuple[Doc, Doc]] = []  # one entry per batch for them (one_entry_per_batch)
        for doc_id in dict.fromkeys(ids):  # each document once, in the batch's order
            before, after = befores.get(doc_id), afters.get(doc_id)
            if before is not None and after is not None and batch_entries_var.get():
                updated.append((before, after))
            else:
                self._trail.record(self.name, before, after)
        if updated:
            self._trail.record_updates(self.name, updated)
        return result

    async def _known_or_read(self, ids: Sequence[Any], session: Any) -> dict[Any, Doc]:
        """The documents ``ids`` as this transaction last saw them: remembered, else read."""
        found: dict[Any, Doc] = {}
        unknown: list[Any] = []
        for doc_id in dict.fromkeys(ids):
            doc = self._trail.known(self.name, doc_id)
            if doc is not None:
                found[doc_id] = doc
            else:
                unknown.append(doc_id)
        found.update(await self._by_ids(unknown, session))
        return found

    async def _targets(self, op: Any, session: Any) -> list[Any]:
        """The ids of the stored documents a bulk operation will change (before it runs)."""
        # PyMongo keeps a request's filter in a private attribute, with no accessor.
        if isinstance(op, InsertOne):
            return []
        if not isinstance(op, ReplaceOne | UpdateOne | UpdateMany | DeleteOne | DeleteMany):
            raise TypeError(f"audited bulk_write: unknown operation {type(op).__name__}")
        flt = op._filter
        if _by_plain_id(flt):
            return [flt["_id"]]
        if isinstance(op, UpdateMany | DeleteMany):
            return [d["_id"] async for d in super().find(flt, {"_id": 1}, session=session)]
        found = await super().find_one(flt, {"_id": 1}, session=session)
        return [] if found is None else [found["_id"]]


def _written(ops: Sequence[Any], befores: Mapping[Any, Doc]) -> dict[Any, Doc] | None:
    """The documents a batch of inserts, replacements and plain field updates by ``_id`` leaves,
    each touched once, known without reading them back: an inserted document as sent (its
    ``_id`` set by the driver), a replaced one as its replacement (a replacement of nothing, not
    upserted, leaves nothing), one whose state before is known and whose update only sets and
    removes top-level fields as that state so changed (:func:`_fields_set`). None for any other
    batch (other updates, deletes, filters, an ``_id`` written twice): those are read after."""
    afters: dict[Any, Doc] = {}
    touched: set[Any] = set()
    for op in ops:
        after: Doc | None = None
        if isinstance(op, InsertOne):
            doc_id, after = op._doc["_id"], dict(op._doc)
        elif isinstance(op, ReplaceOne | UpdateOne) and _by_plain_id(op._filter):
            doc_id = op._filter["_id"]
            if isinstance(op, ReplaceOne):
                after = {"_id": doc_id, **op._doc}
            elif (after := _fields_set(befores.get(doc_id), op._doc)) is None:
                return None  # not a plain $set / $unset of a known document: read back
        else:
            return None
        if doc_id in touched:
            return None
        touched.add(doc_id)
        if isinstance(op, InsertOne) or doc_id in befores or op._upsert:
            afters[doc_id] = after
    return afters


def _fields_set(before: Doc | None, update: Any) -> Doc | None:
    """The document an update that only sets (``$set``) and removes (``$unset``) top-level
    fields leaves of ``before`` (the fields named plainly: no dots, no operators, not
    ``_id``); None for any other update, or when ``before`` is unknown."""
    if before is None or not isinstance(update, Mapping) or not update or set(update) - {"$set", "$unset"}:
        return None
    parts = list(update.values())
    if not all(isinstance(part, Mapping) for part in parts):
        return None
    names = [name for part in parts for name in part]
    if any(not isinstance(n, str) or "." in n or n.startswith("$") or n == "_id" for n in names):
        return None
    removed = update.get("$unset", {})
    return {**{k: v for k, v in before.items() if k not in removed}, **update.get("$set", {})}


Run = tuple[list[Any], dict[str, Context], Context | None]


def queued_runs(queued: Sequence[tuple[Any, Context | None]], *, audited: bool = True) -> list[Run]:
    """A collection's deferred writes (``Tx.update_later``), each with the cause that queued it,
    as the fewest ordered runs ``(writes, cause by str(_id), cause of the whole run)`` in which
    each record has one cause: ONE run (one ``bulk_write``) unless a record is written again by
    another cause, or a write does not name its record by ``_id`` (then a run of its own,
    under its cause: its records are known only when it runs). Not ``audited`` (bookkeeping,
    :data:`PLATFORM_COLLECTIONS`): one run, whoever queued them."""
    if not queued:
        return []
    if not audited or all(ctx is None for _, ctx in queued):
        return [([op for op, _ in queued], {}, None)]
    runs: list[Run] = []
    ops: list[Any] = []
    owners: dict[str, Context | None] = {}

    def close() -> None:
        if ops:
            runs.append((list(ops), {k: v for k, v in owners.items() if v is not None}, None))
        ops.clear()
        owners.clear()

    for op, ctx in queued:
        flt: Any = getattr(op, "_filter", None)
        if isinstance(op, InsertOne) or not _by_plain_id(flt):
            close()
            runs.append(([op], {}, ctx))
            continue
        key = str(flt["_id"])
        if key in owners and owners[key] is not ctx:
            close()
        owners[key] = ctx
        ops.append(op)
    close()
    return runs


def _by_plain_id(flt: Any) -> bool:
    return isinstance(flt, Mapping) and set(flt) == {"_id"} and not isinstance(flt["_id"], dict)


# -- erasure: the one rewrite ------------------------------------------------------------------

ERASED = "[erased]"


def scrub(value: Any, pattern: re.Pattern[str] | None) -> Any:
    """``value`` with every match of ``pattern`` in its strings replaced by ``[erased]`` (deep;
    dict keys and ``_id`` kept)."""
    if pattern is None:
        return value
    if isinstance(value, str):
        return pattern.sub(ERASED, value)
    if isinstance(value, list):
        return [scrub(v, pattern) for v in value]
    if isinstance(value, dict):
        return {k: v if k == "_id" else scrub(v, pattern) for k, v in value.items()}
    return value


def _scrubbed_changes(changes: list[Doc], pattern: re.Pattern[str]) -> list[Doc]:
    return [
        {**c, "before": scrub(c.get("before"), pattern), "after": scrub(c.get("after"), pattern)}
        for c in changes
    ]


def _scrubbed(entry: Mapping[str, Any], pattern: re.Pattern[str]) -> Doc:
    """The entry's ``changes`` and, in a batch entry, each record's, without the person's values."""
    out: Doc = {}
    if "changes" in entry:
        out["changes"] = _scrubbed_changes(entry["changes"], pattern)
    if RECORDS in entry:
        out[RECORDS] = [_scrubbed_record(r, pattern) for r in entry[RECORDS]]
    return out


def _scrubbed_record(record: Doc, pattern: re.Pattern[str]) -> Doc:
    """A batch entry's record (an insert's ``after``, an update's ``changes``) without the values."""
    if "changes" in record:
        return {**record, "changes": _scrubbed_changes(record["changes"], pattern)}
    if "after" not in record:
        return record  # named (:data:`NAMED`): its values are the stored record's, erased there
    return {**record, "after": scrub(record["after"], pattern)}


async def erase_values(
    db: AsyncDatabase[Doc],
    session: AsyncClientSession,
    records: Sequence[tuple[str, Any]],
    pattern: re.Pattern[str] | None,
) -> int:
    """Replace the person's values (``pattern``) in the before/after values of every audit entry
    of ``records`` (``(collection, _id)``), those of the current transaction not yet written
    included (``db`` is then its :class:`AuditedDatabase`); returns how many entries changed.

    The one write to ``audit_log`` besides inserting, for erasure only (issue 9): who, when,
    which record and which fields changed stay; only the erased person's values go.
    """
    if pattern is None or not records:
        return 0
    rewritten = 0
    if isinstance(db, AuditedDatabase):
        for pending in db._trail.entries:
            scrubbed = _scrubbed(pending, pattern)
            if any(pending[k] != v for k, v in scrubbed.items()):
                pending.update(scrubbed)
                rewritten += 1
    log = db.client[db.name][AUDIT_LOG]  # the plain collection: AuditedCollection refuses writes
    ids_by_type: dict[str, list[str]] = {}
    for collection, doc_id in records:
        ids_by_type.setdefault(collection, []).append(str(doc_id))
    for record_type, ids in ids_by_type.items():
        query = {"record.type": record_type, "record.id": {"$in": ids}}
        async for stored in log.find(query, {"changes": 1, RECORDS: 1}, session=session):
            scrubbed = _scrubbed(stored, pattern)
            if any(stored[k] != v for k, v in scrubbed.items()):
                await log.update_one({"_id": stored["_id"]}, {"$set": scrubbed}, session=session)
                rewritten += 1
    return rewritten


# -- the read side ----------------------------------------------------------------------------


async def ensure_indexes(db: AsyncDatabase[Doc]) -> None:
    """One index per listed query (tests/contract checks with ``explain``: no collection scan)."""
    log = db[AUDIT_LOG]
    await log.create_index([("at", DESCENDING), ("_id", DESCENDING)], name="newest")
    await log.create_index(
        [("actor.user_id", ASCENDING), ("at", DESCENDING), ("_id", DESCENDING)], name="by_user"
    )
    await log.create_index(
        [("record.type", ASCENDING), ("record.id", ASCENDING), ("at", DESCENDING), ("_id", DESCENDING)],
        name="by_record",
    )


# Newest first: the time, then the id (crm_platform.paging's keyset cursor).
NEWEST = Sort("newest", "at")


@dataclass(frozen=True)
class Filters:
    user_id: str | None = None
    record_type: str | None = None
    record_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def query(self) -> Doc:
        q: Doc = {}
        if self.user_id is not None:
            q["actor.user_id"] = self.user_id
        if self.record_type is not None:
            q["record.type"] = self.record_type
        if self.record_id is not None:
            q["record.id"] = self.record_id
        period: Doc = {}
        if self.since is not None:
            period["$gte"] = self.since
        if self.until is not None:
            period["$lt"] = self.until
        if period:
            q["at"] = period
        return q

    def hint(self) -> str:
        """The index that serves this combination (the planner may pick another without it)."""
        if self.record_type is not None or self.record_id is not None:
            return "by_record"
        return "by_user" if self.user_id is not None else "newest"


@dataclass(frozen=True)
class Page:
    items: list[Doc]
    next_cursor: str | None


def find_query(db: AsyncDatabase[Doc], filters: Filters, cursor: str | None = None) -> Any:
    """The cursor the listing and the export read (newest first); ``record_id`` needs ``record_type``."""
    if filters.record_id is not None and filters.record_type is None:
        raise ValueError("record_id needs record_type")
    query = filters.query()
    if cursor is not None:
        query = {"$and": [query, NEWEST.after(cursor)]}
    return db[AUDIT_LOG].find(query).sort(NEWEST.spec).hint(filters.hint())


async def query(db: AsyncDatabase[Doc], filters: Filters, *, limit: int, cursor: str | None = None) -> Page:
    """A page of ``limit`` stored entries, newest first; a batch entry shows as one entry per
    record it names (:func:`entries_of`; only the filtered record's with ``record_id``)."""
    docs = await find_query(db, filters, cursor).limit(limit + 1).to_list()
    stored, next_cursor = page(docs, limit, NEWEST)
    await with_values(db, stored, filters.record_id)
    return Page([e for doc in stored for e in entries_of(doc, filters.record_id)], next_cursor)


async def with_values(db: AsyncDatabase[Doc], docs: Sequence[Doc], record_id: str | None = None) -> None:
    """Give each named record (:data:`NAMED`, :func:`inserts_named`) of ``docs`` its inserted
    values (``after``, as a copy would have kept them), in place; only ``record_id``'s when
    given. Two reads per named entry: the records, then every other entry of them."""
    for doc in docs:
        if not doc.pop(NAMED, False):
            continue
        records = [r for r in doc[RECORDS] if record_id is None or r["id"] == record_id]
        values = await _inserted_values(db, doc, [r["id"] for r in records])
        for r in records:
            r["after"] = values[r["id"]]


async def _inserted_values(db: AsyncDatabase[Doc], doc: Doc, ids: list[str]) -> dict[str, Doc]:
    """The values each of ``ids`` (records ``doc``, a named insert, made) had when inserted: the
    stored record, each later change undone, newest first (any other entry of the record is
    later: its id was new at the insert); a record deleted since, its delete's values."""
    collection = doc["record"]["type"]
    states: dict[str, Doc] = {i: {} for i in ids}
    if not ids:
        return {}
    async for stored in db[collection].find({"_id": {"$in": ids}}):
        states[str(stored["_id"])] = stored
    others = {"record.type": collection, "record.id": {"$in": ids}, "_id": {"$ne": doc["_id"]}}
    async for later in db[AUDIT_LOG].find(others).sort(NEWEST.spec).hint("by_record"):
        for rec_id, action, changes in _record_changes(later, states):
            states[rec_id] = _undone(states[rec_id], action, changes)
    return {i: inserted_fields(state) for i, state in states.items()}


def _record_changes(doc: Doc, wanted: Mapping[str, Any]) -> Iterator[tuple[str, str, list[Doc]]]:
    """``(record id, action, changes)`` of each of ``wanted``'s records a stored entry names."""
    if RECORDS not in doc:
        if doc["record"]["id"] in wanted:
            yield doc["record"]["id"], doc["action"], doc.get("changes") or []
        return
    for r in doc[RECORDS]:
        if r["id"] in wanted:
            yield r["id"], doc["action"], r.get("changes") or []


def _undone(state: Doc, action: str, changes: list[Doc]) -> Doc:
    """A record's state before an entry's change, from its state after it."""
    if action == INSERT:
        return {}
    if action == DELETE:
        return {c["field"]: c["before"] for c in changes if c["before"] is not None}
    before = dict(state)
    for c in changes:
        if c["before"] is None:
            before.pop(c["field"], None)
        else:
            before[c["field"]] = c["before"]
    return before


def entries_of(doc: Doc, record_id: str | None = None) -> list[Doc]:
    """A stored entry as the per-record entries it stands for: itself, or for a batch entry
    (:func:`one_entry_per_batch`) one entry per record (``record_id``: that record's only),
    each with the batch's who, what, when and ids (or the record's own cause where it
    differs: :func:`with_cause`), its own record and changes (an insert's:
    every field it set, as an insert's entry lists them; an update's: its own), its id
    ``<batch entry id>/<position>`` and ``batch: {id, size}``."""
    records = doc.get(RECORDS)
    if records is None:
        return [doc]
    shared = {k: v for k, v in doc.items() if k not in (RECORDS, "record", "_id")}
    batch = {"id": doc["_id"], "size": len(records)}
    return [
        {
            **shared,
            **{name: r[name] for name in CAUSE_FIELDS if name in r},  # its own cause (with_cause)
            "_id": f"{doc['_id']}/{k}",
            "record": {"type": doc["record"]["type"], "id": r["id"]},
            "changes": r["changes"] if "changes" in r else diff(None, r["after"]),
            "batch": batch,
        }
        for k, r in enumerate(records)
        if record_id is None or r["id"] == record_id
    ]


async def history(
    db: AsyncDatabase[Doc], record_type: str, record_id: str, *, limit: int, cursor: str | None = None
) -> Page:
    """One record's changes, newest first: who, when, each field before and after."""
    return await query(db, Filters(record_type=record_type, record_id=record_id), limit=limit, cursor=cursor)


def plain(value: Any) -> Any:
    """A stored value as JSON: times in RFC 3339, money and ids as strings."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal128):
        return str(value.to_decimal())
    if isinstance(value, Decimal | ObjectId):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


CSV_COLUMNS = (
    "at", "service", "actor_type", "actor_id", "actor_username", "actor_roles", "action", "operation",
    "record_type", "record_id", "changed_fields", "changes", "request_id", "correlation_id",
)  # fmt: skip


def csv_row(doc: Mapping[str, Any]) -> list[str]:
    actor, record = doc.get("actor") or {}, doc.get("record") or {}
    changes = plain(doc.get("changes") or [])
    # Formula-looking cells are neutralised by crm_platform.csv_stream, which writes the export.
    return [str(v) for v in [
        plain(doc["at"]), doc.get("service", ""), actor.get("type", ""), actor.get("user_id", ""),
        actor.get("username", ""), " ".join(actor.get("roles", [])), doc.get("action", ""),
        doc.get("operation") or "", record.get("type", ""), record.get("id", ""),
        " ".join(c["field"] for c in changes), json.dumps(changes, sort_keys=True),
        doc.get("request_id") or "", doc.get("correlation_id") or "",
    ]]  # fmt: skip


async def csv_rows(db: AsyncDatabase[Doc], filters: Filters, *, batch: int = 500) -> AsyncIterator[list[str]]:
    """The entries as CSV rows (:data:`CSV_COLUMNS`), read ``batch`` at a time: never all in memory."""
    async for doc in find_query(db, filters).batch_size(batch):
        await with_values(db, [doc], filters.record_id)
        for each in entries_of(doc, filters.record_id):
            yield csv_row(each)
