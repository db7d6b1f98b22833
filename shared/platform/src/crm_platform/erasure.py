"""Erasure of a person in a department's own database (issue 9, "right to be forgotten").

The gateway publishes ``erasure.requested`` with only the keyed hash of the person's e-mail
(:func:`crm_platform.pseudonym.email_hash`). Each department declares where people live in its
database (:class:`Target`: a collection and the dotted paths of the e-mails in its documents;
the object holding an e-mail is the person: its ``name``/``phone`` siblings are theirs) and
where free text about them may be (:class:`Related`: documents linked to a person's record),
and its consumer hands the request to :func:`erase_person`, which, in the consumer's
transaction:

1. finds the person's documents by ``person_hashes`` (the hashes of the e-mails a document
   holds, written by the service's store with every save: :func:`person_hashes`; indexed),
   or, for a target ``by_held_key``, by the id of the held key a sealed event's person was
   opened with, which a document stored from it holds there instead of the hash (the request's
   hash -> the holder's ``person_keys`` that learned it -> their ids: one more query),
   plus the documents named by id in the request; documents written before the field existed
   are found by a scan of those without it (the backfill path: :func:`backfill` gives them the
   field, so the scan shrinks to nothing);
2. replaces each matching person's e-mail, name and phone by a stand-in derived from the hash
   alone (:func:`crm_platform.pseudonym.erased_email`: no key and no e-mail needed), clears the
   target's free-text fields, and replaces any other mention of the person's values in the
   document and in its related documents by ``[erased]`` (:func:`crm_platform.audit.scrub`);
3. rewrites the before/after values of the audit entries of every document it changed, those
   of this very transaction included (:func:`crm_platform.audit.erase_values`: the one change
   the append-only log allows, made by the audit module itself).

The write of step 2 is an ordinary audited write; the department then emits
``erasure.completed`` through its outbox in the same transaction. A replayed request finds
nothing left to change (the hash is removed from ``person_hashes``) and the consumer's ledger
drops a re-delivered copy, so a department confirms once.

**The late writer** (:class:`Rechecks`). A transaction that read the person (a sealed handoff's
held key, in its snapshot) before the request's transaction committed can commit a new document
holding them after it: the two write different documents, so snapshot isolation sees no
conflict, and the request's query never saw that document. mongod ends every transaction within
a bound of its start (``transactionLifetimeLimitSeconds`` plus its abort pass's period), so the
handler also records the request in :data:`RECHECKS` (one write per request, none per handoff),
and each department's :func:`recheck_loop` matches the request once more when every
transaction that began before its commit has ended: idempotent, claimed by deleting the
record in the recheck's own transaction, so a process killed before it ran leaves it to the next.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from crm_contracts import Envelope
from crm_contracts.events.governance import ErasureCompletedV1, ErasureErasedV1, ErasureRequestedV1
from pymongo.errors import PyMongoError

from crm_platform import audit, metrics, shredding
from crm_platform.audit import ERASED, scrub  # noqa: F401 - re-exported for the departments
from crm_platform.clock import Clock, now_millis, to_millis
from crm_platform.mongo import BATCH_EVENTS, OUTBOX
from crm_platform.pseudonym import email_hash, erased_email, erased_name, is_erased_email
from crm_platform.wakeups import sleep_on_grid

log = logging.getLogger("crm.erasure")

Doc = dict[str, Any]

PERSON_HASHES = "person_hashes"
# Values shorter than this are not searched for inside free text (a two-letter name would
# erase every word that contains it); they are still replaced where they are the person's field.
MIN_MENTION = 3
NAME_KEYS = ("name", "full_name", "contact_name")
PHONE_KEYS = ("phone", "contact_phone")


@dataclass(frozen=True)
class Related:
    """Documents that may mention a person of a target's documents (notes, tickets, ...):
    those whose ``foreign_key`` holds the id of an erased document are scrubbed of the person's
    values, and their ``clear`` fields (free text about the person) emptied."""

    collection: str
    foreign_key: str
    clear: tuple[str, ...] = ()


@dataclass(frozen=True)
class Target:
    """A collection whose documents hold people: the dotted ``emails`` paths (lists walked).

    ``by_held_key``: a document stored from a sealed event's opened person may name that person
    in ``person_hashes`` by the id of the held key that opened them
    (``crm_platform.shredding.held_key_of``: ``held:<owner>:<person id>``, time-ordered, so its
    index entry lands at the B-tree's edge) instead of by their hash (random: a page anywhere);
    erasure then finds it as hash -> held keys -> documents (:func:`_matching`)."""

    collection: str
    emails: tuple[str, ...]
    clear: tuple[str, ...] = ()
    related: tuple[Related, ...] = ()
    by_held_key: bool = False


@dataclass
class Person:
    """What was found of one person: the values to erase wherever they are mentioned."""

    values: set[str] = field(default_factory=set)

    def add(self, value: Any) -> None:
        if isinstance(value, str) and value.strip():
            self.values.add(value.strip())


@dataclass
class Outcome:
    records: int = 0
    audit_entries: int = 0
    changed: list[tuple[str, Any]] = field(default_factory=list)
    # The person's values found (their e-mails name the person keys to destroy as well).
    values: set[str] = field(default_factory=set)
    keys_destroyed: int = 0


# -- pure: where the people of a document are, and how a document is erased -----------------


def person_hashes(*emails: str | None) -> list[str]:
    """The ``person_hashes`` value of a document holding these e-mails (the store writes it); an
    erased person's stand-in is nobody's e-mail."""
    return sorted({email_hash(e) for e in emails if e and not is_erased_email(e)})


def _walk(value: Any, parts: Sequence[str]) -> Iterator[tuple[dict[str, Any], str]]:
    """Each (parent object, key) that the dotted path reaches, through lists."""
    if isinstance(value, list):
        for item in value:
            yield from _walk(item, parts)
        return
    if not isinstance(value, dict) or not parts:
        return
    head, rest = parts[0], parts[1:]
    if not rest:
        if isinstance(value.get(head), str):
            yield value, head
        return
    yield from _walk(value.get(head), rest)


def emails_in(doc: Mapping[str, Any], paths: Iterable[str]) -> list[str]:
    return [parent[key] for path in paths for parent, key in _walk(doc, path.split("."))]


def hashes_of(doc: Mapping[str, Any], target: Target) -> list[str]:
    return person_hashes(*emails_in(doc, target.emails))


def with_person_hashes(doc: Doc, target: Target) -> Doc:
    """``doc`` with its ``person_hashes`` (a store's ``<entity>_doc`` ends with it)."""
    doc[PERSON_HASHES] = hashes_of(doc, target)
    return doc


def erase_doc(doc: Doc, target: Target, digest: str | None, whole: bool, person: Person) -> Doc:
    """``doc`` with the person of ``digest`` erased (every person of it when ``whole``: the
    document was named by id); the values found are added to ``person``."""
    out = audit.copy_doc(doc)
    for path in target.emails:
        for parent, key in _walk(out, path.split(".")):
            if is_erased_email(parent[key]):
                continue  # erased already (a request filed twice): nothing left to change
            found = email_hash(parent[key])
            if whole or found == digest:
                _erase_person_object(parent, key, found, person)
    for path in target.clear:
        _clear(out, path)
    # Recomputed from what is left: a held key's id goes too (its person is gone, or named by
    # their hash from now on).
    remaining = [h for h in hashes_of(out, target) if h != digest]
    out[PERSON_HASHES] = remaining
    return out


def _erase_person_object(parent: dict[str, Any], key: str, digest: str, person: Person) -> None:
    person.add(parent[key])
    parent[key] = erased_email(digest)
    for name in NAME_KEYS:
        if isinstance(parent.get(name), str):
            person.add(parent[name])
            parent[name] = erased_name(digest)
    for phone in PHONE_KEYS:
        if parent.get(phone) is not None:
            person.add(parent[phone])
            parent[phone] = None


def _clear(value: Any, path: str) -> None:
    """Set what the dotted ``path`` reaches (through lists) to None, whatever its type."""
    head, _, rest = path.partition(".")
    if isinstance(value, list):
        for item in value:
            _clear(item, path)
    elif isinstance(value, dict) and value.get(head) is not None:
        if rest:
            _clear(value[head], rest)
        else:
            value[head] = None


def mention_pattern(values: Iterable[str]) -> re.Pattern[str] | None:
    """One case-insensitive pattern for the values worth searching for in free text."""
    wanted = sorted({v for v in values if len(v) >= MIN_MENTION}, key=len, reverse=True)
    if not wanted:
        return None
    return re.compile("|".join(re.escape(v) for v in wanted), re.IGNORECASE)


# -- in the consumer's transaction --------------------------------------------------------------


async def erase_person(
    tx: Any, targets: Sequence[Target], digest: str | None, record_ids: Sequence[str] = ()
) -> Outcome:
    """Erase the person of ``digest`` (and the records named by id) in ``tx``'s database.

    ``tx`` is the platform's :class:`crm_platform.mongo.Tx` (its audited database and session).
    First every target's documents are found and erased (which collects the person's values),
    then each is written once with any other mention of those values scrubbed, then the related
    documents, then the audit entries of everything written.
    """
    outcome = Outcome()
    person = Person()
    erased: list[tuple[Target, Doc, Doc]] = []
    for target in targets:
        for doc in await _matching(tx, target, digest, record_ids):
            erased.append(
                (target, doc, erase_doc(doc, target, digest, str(doc["_id"]) in record_ids, person))
            )
    pattern = mention_pattern(person.values)
    for target, old, new in erased:
        await _replace(tx, target.collection, old, scrub(new, pattern), outcome)
    for target in targets:
        ids = [old["_id"] for t, old, _ in erased if t is target]
        for related in target.related:
            await _scrub_related(tx, related, ids, pattern, outcome)
    outcome.audit_entries = await audit.erase_values(tx.db, tx.session, outcome.changed, pattern)
    await _scrub_outbox(tx, [str(doc_id) for _, doc_id in outcome.changed], pattern)
    outcome.values = person.values
    # Crypto-shredding: the person's data keys go, so their sealed events on the log stay sealed.
    digests = [*shredding.email_hashes(person.values), *([digest] if digest else [])]
    outcome.keys_destroyed = await shredding.shred(tx, digests)
    return outcome


async def _scrub_outbox(tx: Any, keys: list[str], pattern: re.Pattern[str] | None) -> None:
    """The outbox keeps published events a week (forensics): those keyed by an erased record
    lose the person's values too. Unpublished ones are left whole: they must still be valid
    events when the relay publishes them (what the log then keeps: docs/governance.md)."""
    if not keys or pattern is None:
        return
    outbox = tx.db[OUTBOX]
    keyed = {"$or": [{"key": {"$in": keys}}, {f"{BATCH_EVENTS}.key": {"$in": keys}}], "published": True}
    async for row in outbox.find(keyed, session=tx.session):
        if BATCH_EVENTS in row:  # a batch row (crm_platform.mongo.outbox_rows): its erased records' events
            wanted = set(keys)
            items = [
                {**item, "envelope": scrub(item["envelope"], pattern)} if item["key"] in wanted else item
                for item in row[BATCH_EVENTS]
            ]
            if items != row[BATCH_EVENTS]:
                await outbox.update_one(
                    {"_id": row["_id"]}, {"$set": {BATCH_EVENTS: items}}, session=tx.session
                )
            continue
        envelope = scrub(row["envelope"], pattern)
        if envelope != row["envelope"]:
            await outbox.update_one({"_id": row["_id"]}, {"$set": {"envelope": envelope}}, session=tx.session)


async def _matching(tx: Any, target: Target, digest: str | None, record_ids: Sequence[str]) -> list[Doc]:
    coll = tx.db[target.collection]
    query = await matching_query(tx, target, digest, record_ids)
    found = [d async for d in coll.find(query, session=tx.session)]
    if digest is None:
        return found
    # Documents written before the store kept person_hashes (until backfill() reached them).
    async for doc in coll.find({PERSON_HASHES: {"$exists": False}}, session=tx.session):
        if digest in hashes_of(doc, target) and doc not in found:
            found.append(doc)
    return found


async def matching_query(tx: Any, target: Target, digest: str | None, record_ids: Sequence[str]) -> Doc:
    """The query of a target's documents of the person of ``digest`` and those named by id: by
    the hash, and (``by_held_key``) by the ids of the held keys that learned it (markers too:
    a key shredded before the request came keeps its hashes), all on ``by_person_hash``."""
    named: list[Doc] = [{"_id": {"$in": list(record_ids)}}]
    if digest is None:
        return {"$or": named}
    held = await shredding.held_keys_by_hash(tx, digest) if target.by_held_key else []
    return {"$or": [person_query(digest, held), *named]}


def person_query(digest: str, held_keys: Sequence[str] = ()) -> Doc:
    """A document of the person of ``digest``: its hash, or one of their held keys' ids, in
    ``person_hashes``."""
    if not held_keys:
        return {PERSON_HASHES: digest}
    return {PERSON_HASHES: {"$in": [digest, *held_keys]}}


async def _replace(tx: Any, collection: str, old: Doc, new: Doc, outcome: Outcome) -> None:
    if new == old:
        return
    await tx.db[collection].replace_one({"_id": old["_id"]}, new, session=tx.session)
    outcome.changed.append((collection, old["_id"]))
    outcome.records += 1


async def _scrub_related(
    tx: Any, related: Related, ids: list[Any], pattern: re.Pattern[str] | None, outcome: Outcome
) -> None:
    if not ids:
        return
    query = {related.foreign_key: {"$in": ids}}
    async for doc in tx.db[related.collection].find(query, session=tx.session):
        new = scrub(doc, pattern)
        for path in related.clear:
            _clear(new, path)
        await _replace(tx, related.collection, doc, new, outcome)


async def backfill(db: Any, targets: Sequence[Target], batch: int = 500) -> int:
    """Give ``person_hashes`` to the documents written before the stores kept it (outside any
    transaction: only that field is set, and only where it is still missing); returns how many.
    Run at start (``ServiceRuntime`` background job); until it is through, :func:`erase_person`
    scans what is left."""
    done = 0
    for target in targets:
        coll = db[target.collection]
        while True:
            docs = [d async for d in coll.find({PERSON_HASHES: {"$exists": False}}).limit(batch)]
            if not docs:
                break
            for doc in docs:
                await coll.update_one(
                    {"_id": doc["_id"], PERSON_HASHES: {"$exists": False}},
                    {"$set": {PERSON_HASHES: hashes_of(doc, target)}},
                )
            done += len(docs)
    return done


async def ensure_indexes(db: Any, targets: Sequence[Target]) -> None:
    """``person_hashes`` indexed on every target; each related collection's link, unless an index
    on that key alone exists already (under another name); the rechecks by their record's time."""
    if targets:
        await ensure_recheck_indexes(db)
    for target in targets:
        await db[target.collection].create_index(PERSON_HASHES, name="by_person_hash")
        for related in target.related:
            coll = db[related.collection]
            keys = [list(ix["key"].keys()) async for ix in await coll.list_indexes()]
            if [related.foreign_key] not in keys and not any(k[:1] == [related.foreign_key] for k in keys):
                await coll.create_index(related.foreign_key, name=f"erasure_{related.foreign_key}")


# -- the consumer handler (added by the runtime when a department subscribes) ------------------


def erasure_handler(targets: Sequence[Target], rechecks: Rechecks | None = None) -> Any:
    """The consumer handler for ``erasure.requested``: erase, then say so through the outbox in
    the same transaction (the department being the envelope's source). With ``rechecks`` (a
    department that stores people) that is ``erasure.erased`` with the recheck's due time, and
    the request's recheck recorded there too (:func:`recheck_loop` runs it and sends
    ``erasure.completed`` with both passes counted); without, ``erasure.completed`` at once."""

    async def on_erasure_requested(tx: Any, event: ErasureRequestedV1, envelope: Envelope) -> None:
        outcome = await erase_person(tx, targets, event.email_hash, event.record_ids)
        now = now_millis()
        waited = _millis_between(event.requested_at, now)
        if rechecks is None:
            tx.emit(
                _completed(tx.source, event.request_id, outcome.records, outcome.audit_entries, waited, now),
                correlation_id=envelope.correlation_id,
            )
        else:
            due = await record_recheck(tx, event, rechecks, outcome, envelope.correlation_id)
            tx.emit(
                ErasureErasedV1(
                    request_id=event.request_id,
                    department=tx.source,
                    records_erased=outcome.records,
                    audit_entries_rewritten=outcome.audit_entries,
                    duration_ms=waited,
                    erased_at=now,
                    recheck_due_at=to_millis(due),
                ),
                correlation_id=envelope.correlation_id,
            )
        log.info(
            "erasure request %s: %d records, %d audit entries, %d person keys destroyed",
            event.request_id,
            outcome.records,
            outcome.audit_entries,
            outcome.keys_destroyed,
            extra={"event_id": envelope.event_id},
        )

    return on_erasure_requested


def _millis_between(start: datetime, end: datetime) -> int:
    return max(0, int((end - start).total_seconds() * 1000))


def _completed(
    department: str, request_id: str, records: int, audit_entries: int, waited: int, at: datetime
) -> ErasureCompletedV1:
    return ErasureCompletedV1(
        request_id=request_id,
        department=department,  # the envelope's source (the gateway checks it)
        records_erased=records,
        audit_entries_rewritten=audit_entries,
        duration_ms=waited,
        completed_at=at,
    )


async def backfill_job(db: Any, targets: Sequence[Target]) -> None:
    """The runtime's start-up job: :func:`backfill`, logged; a failure is logged and left to the
    next start (the erasure handler scans what is left meanwhile)."""
    try:
        done = await backfill(db, targets)
    except PyMongoError as exc:
        log.warning("person_hashes backfill stopped (erasure scans the rest): %s", exc)
        return
    if done:
        log.info("person_hashes backfilled on %d documents", done)


# -- the late writer: each request matched once more after every older transaction ended -------

# One document per request a department erased (``_id``: the request id): the hash, the record
# ids and when it was recorded. Bookkeeping, not a record (crm_platform.audit.PLATFORM_COLLECTIONS).
RECHECKS = "erasure_rechecks"
# Added to the bound: the clocks of the service's replicas, and the abort pass's own run time.
RECHECK_MARGIN_SECONDS = 10.0
# mongod's default ``transactionLifetimeLimitSeconds``: used when the server does not say.
DEFAULT_TRANSACTION_LIFETIME_SECONDS = 60.0
RECHECK_BATCH = 100


def wall_clock() -> datetime:
    """The real time, never the demo clock's (:func:`crm_platform.clock.system_clock` follows a
    consumed event's time under ``CRM_DEMO_CLOCK``): mongod's transaction lifetimes run on it."""
    return datetime.now(UTC)


def transaction_bound(lifetime_seconds: float) -> float:
    """How long after its start a transaction can still commit: mongod aborts a transaction older
    than ``transactionLifetimeLimitSeconds`` on a pass it runs every half of that (at least 1 s,
    at most 60 s), so one can outlive the limit by up to one such period."""
    return lifetime_seconds + min(60.0, max(1.0, lifetime_seconds / 2))


def recheck_delay(lifetime_seconds: float, margin: float = RECHECK_MARGIN_SECONDS) -> float:
    """From a recheck's recording to when it is due. The request's own transaction began before
    the record was written, so it commits within one bound of it; a transaction that read the
    person before that commit began before it too, so it has ended one bound after the commit.
    190 s with mongod's default 60 s limit."""
    return 2 * transaction_bound(lifetime_seconds) + margin


@dataclass
class Rechecks:
    """A department's erasure rechecks: ``delay`` seconds from a request's record to its
    recheck (``CRM_ERASURE_RECHECK_SECONDS``; None: :func:`recheck_delay` of the server's
    ``transactionLifetimeLimitSeconds``, read at start), on ``clock`` (tests move a
    ``ManualClock``)."""

    delay: float | None = None
    clock: Clock = wall_clock

    @property
    def poll_seconds(self) -> float:
        """How often the loop looks for due rechecks: a twentieth of the delay, 50 ms to 10 s."""
        return min(10.0, max(0.05, (self.delay or 0.0) / 20))

    @property
    def delay_or_default(self) -> float:
        """The delay, or mongod's default's before :meth:`resolve` ran (a handler called before
        the runtime started: tests)."""
        return self.delay if self.delay is not None else recheck_delay(DEFAULT_TRANSACTION_LIFETIME_SECONDS)

    async def resolve(self, db: Any) -> float:
        """The delay: the setting's, else from the server's transaction lifetime (60 s when the
        server does not say, e.g. the service's user may not run ``getParameter``)."""
        if self.delay is None:
            self.delay = recheck_delay(await _transaction_lifetime(db))
        return self.delay


async def _transaction_lifetime(db: Any) -> float:
    try:
        answer = await db.client.admin.command({"getParameter": 1, "transactionLifetimeLimitSeconds": 1})
        return float(answer["transactionLifetimeLimitSeconds"])
    except (PyMongoError, KeyError, TypeError, ValueError) as exc:
        log.warning(
            "transactionLifetimeLimitSeconds not read (%s): taken as %.0f s; set CRM_ERASURE_RECHECK_SECONDS "
            "if the server's is longer",
            exc,
            DEFAULT_TRANSACTION_LIFETIME_SECONDS,
        )
        return DEFAULT_TRANSACTION_LIFETIME_SECONDS


async def record_recheck(
    tx: Any, event: ErasureRequestedV1, rechecks: Rechecks, outcome: Outcome, correlation_id: str | None
) -> datetime:
    """The request's recheck, in the erasure's transaction, with what the first pass erased and
    what the confirmation sent after the recheck needs (``confirm``: a record of an older
    release, which confirmed at its commit, has none and its recheck sends nothing). A request
    erased again (filed with the same id, a replay) moves its recheck to the later erasure
    (``$max``) and adds that pass's counts. Returns when the recheck is due."""
    now = rechecks.clock()
    update = {
        "$set": {
            "email_hash": event.email_hash,
            "record_ids": list(event.record_ids),
            "requested_at": event.requested_at,
            "correlation_id": correlation_id,
            "confirm": True,
        },
        "$inc": {"records_erased": outcome.records, "audit_entries_rewritten": outcome.audit_entries},
        "$max": {"recorded_at": now},
    }
    await tx.db[RECHECKS].update_one({"_id": event.request_id}, update, upsert=True, session=tx.session)
    return now + timedelta(seconds=rechecks.delay_or_default)


async def record_key_recheck(tx: Any, held: Doc, now: datetime) -> int:
    """Rechecks for the hashes of a held key that the owner's shredding record found live
    (``crm_platform.shredding``): one per hash (``_id`` ``key:<held id>:<hash prefix>``), due
    after the delay like a request's, run by :func:`recheck_loop`, sending nothing (no request
    of the gateway's is theirs: the department's own request, if it comes, has its own). A key
    that learned no hash (a v1 key record never opened) gets none. Returns how many."""
    digests = [h for h in held.get(PERSON_HASHES) or () if not str(h).startswith("held:")]
    for digest in digests:
        update = {"$set": {"email_hash": digest, "record_ids": []}, "$max": {"recorded_at": now}}
        doc_id = f"key:{held['_id']}:{digest[:16]}"
        await tx.db[RECHECKS].update_one({"_id": doc_id}, update, upsert=True, session=tx.session)
    return len(digests)


async def run_due_rechecks(store: Any, targets: Sequence[Target], rechecks: Rechecks) -> int:
    """Each recheck due now, run in a transaction of its own (:func:`_recheck`); how many ran."""
    delay = await rechecks.resolve(store.db)
    due = {"recorded_at": {"$lte": rechecks.clock() - timedelta(seconds=delay)}}
    found = [d async for d in store.db[RECHECKS].find(due).sort("recorded_at", 1).limit(RECHECK_BATCH)]
    for doc in found:

        async def work(tx: Any, doc: Doc = doc) -> Outcome | None:
            return await _recheck(tx, targets, doc)

        outcome = await store.transaction(work)
        if outcome is not None:
            _observe_recheck(store.source, str(doc["_id"]), outcome)
    return len(found)


async def _recheck(tx: Any, targets: Sequence[Target], doc: Doc) -> Outcome | None:
    """The request of ``doc`` matched again, its record deleted in the same transaction (the
    claim: another replica's run of it deletes nothing and does nothing; None), and the
    department's ``erasure.completed`` sent in it with both passes counted."""
    claim = {"_id": doc["_id"], "recorded_at": doc["recorded_at"]}
    claimed = await tx.db[RECHECKS].delete_one(claim, session=tx.session)
    if claimed.deleted_count == 0:
        return None  # run by another replica, or recorded again since (due later)
    outcome = await erase_person(tx, targets, doc.get("email_hash"), doc.get("record_ids") or ())
    if doc.get("confirm"):
        now = now_millis()
        requested_at = to_millis(doc["requested_at"])
        completed = _completed(
            tx.source,
            str(doc["_id"]),
            int(doc.get("records_erased", 0)) + outcome.records,
            int(doc.get("audit_entries_rewritten", 0)) + outcome.audit_entries,
            _millis_between(requested_at, now),
            now,
        )
        tx.emit(completed, correlation_id=doc.get("correlation_id"))
    return outcome


def _observe_recheck(service: str, request_id: str, outcome: Outcome) -> None:
    found = "erased" if outcome.records or outcome.keys_destroyed else "clean"
    metrics.ERASURE_RECHECKS.labels(service, found).inc()
    level = logging.WARNING if found == "erased" else logging.INFO
    log.log(
        level,
        "erasure request %s rechecked: %d records erased late, %d audit entries, %d person keys destroyed",
        request_id,
        outcome.records,
        outcome.audit_entries,
        outcome.keys_destroyed,
    )


async def recheck_loop(store: Any, targets: Sequence[Target], rechecks: Rechecks) -> None:
    """The runtime's background job: run the due rechecks, then wait ``poll_seconds`` for the
    next (a failure is logged and tried again then); until cancelled. A recheck recorded by a
    process that stopped before it ran is run by the next one (the record is in the database)."""
    delay = await rechecks.resolve(store.db)
    log.info("erasure rechecks: %.1f s after each request", delay)
    while True:
        try:
            ran = await run_due_rechecks(store, targets, rechecks)
        except Exception as exc:  # noqa: BLE001 - the database away, or anything else: the loop goes on
            log.warning("erasure rechecks stopped (tried again in %.1f s): %r", rechecks.poll_seconds, exc)
            ran = 0
        if ran < RECHECK_BATCH:
            await sleep_on_grid(rechecks.poll_seconds)  # with the idle process's other timers


async def ensure_recheck_indexes(db: Any) -> None:
    """The rechecks by when they were recorded (the loop's query of the due ones)."""
    await db[RECHECKS].create_index("recorded_at", name="by_recorded_at")
