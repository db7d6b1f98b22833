"""Crypto-shredding: personal data on the Kafka log, readable only while the person exists.

Issue 9, docs/governance.md section 3. Events are kept a year; a person's e-mail, name and
phone in them are sealed with a random per-person AES-256-GCM data key, and erasure destroys
the key, so what stays on the log is ciphertext nobody can read.

- **Producers change nothing.** Their domain emits the plaintext versions as before
  (``lead.captured`` v2, ``lead.qualified`` v1, ``deal.won`` v2); when the transaction stores
  its events (:func:`seal_emitted`, called by ``crm_platform.mongo.Store``) each one is turned
  into its sealed version (``lead.captured`` v3, ``lead.qualified`` v2, ``deal.won`` v3): the
  plaintext fields get stand-ins and the values go, sealed, into the new optional field. The
  key of each person is looked up by the keyed hash of their e-mail in the department's own
  ``person_keys`` collection (one query per transaction), or made and stored there, and its
  ``*.person_key_issued`` record emitted in the same transaction: the key reaches the outbox
  exactly when the first event sealed with it does. ``lead.captured``, which nobody opens,
  gets the stand-ins only (no ``sealed_person``, no key: data minimisation, docs/governance.md
  section 3): a person's key is made at their first qualification.
- **Holders** (``crm_contracts.access.PERSON_KEYS``: sales reads marketing's keys, customer
  success sales') keep a copy of each key they read (:func:`key_handlers`, a consumer of its
  own so that an event waiting for its key never holds up the key), and their handlers get the
  opened, plaintext version of an event (:func:`unsealing`): nothing to change in a handler.
  An event whose key has not arrived yet raises :class:`PersonKeyPending`, which the platform
  consumer retries (``CRM_PERSON_KEY_WAIT_SECONDS``) instead of dead-lettering it.
- **Erasure** (:func:`shred`, from ``crm_platform.erasure``): the owner deletes its key and
  emits ``*.person_key_shredded`` (same record key: the latest record per person on the
  compacted topic), drops the key's outbox rows; a holder replaces its copy by a marker when
  the shredding record arrives, or at once when the erasure request's hash names it. An event
  of a shredded person opens with erased stand-ins (a replay rebuilds the record, not the
  person).

Costs: one AES-GCM call per person per event, one lookup per transaction, no key derivation.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pydantic_core
from bson.binary import Binary
from crm_contracts import Envelope, Event, utcnow
from crm_contracts.access import PERSON_KEYS
from crm_contracts.envelope import replaced
from crm_contracts.events.common import SEALED_NAME, Contact, SealedPerson, sealed_email
from crm_contracts.events.leads import LeadCapturedV2, LeadQualifiedV1, LeadQualifiedV2
from crm_contracts.events.person_keys import (
    LeadPersonKeyIssuedV1,
    LeadPersonKeyIssuedV2,
    LeadPersonKeyShreddedV1,
    SalesPersonKeyIssuedV1,
    SalesPersonKeyIssuedV2,
    SalesPersonKeyShreddedV1,
)
from crm_contracts.events.sales import DealWonV2
from crm_contracts.registry import model_for
from crm_contracts.uuids import uuid7_int
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pymongo import ReturnDocument, UpdateOne

from crm_platform.batch import preload_of
from crm_platform.kafka import records_fetch_pending, unwatch_records_fetches, watch_records_fetches
from crm_platform.pseudonym import email_hash, erased_email, erased_name, is_erased_email

KEYS = "person_keys"
KEY_BYTES = 32
NONCE_BYTES = 12
OUTBOX = "outbox"  # crm_platform.mongo.OUTBOX (not imported: mongo imports this module)
BATCH_EVENTS = "events"  # crm_platform.mongo.BATCH_EVENTS, likewise

Doc = dict[str, Any]
KeyIssued = LeadPersonKeyIssuedV1 | SalesPersonKeyIssuedV1
Handler = Callable[[Any, Any, Envelope], Awaitable[None]]

# The key records an owner emits: v2, with the person's e-mail hash (holders still read v1).
_ISSUED: dict[str, type[LeadPersonKeyIssuedV2 | SalesPersonKeyIssuedV2]] = {
    "leads": LeadPersonKeyIssuedV2,
    "sales": SalesPersonKeyIssuedV2,
}
# The key records' event types: erasure changes them in place in a waiting outbox row.
KEY_RECORDS = frozenset(issued.event_type for issued in _ISSUED.values())
_SHREDDED: dict[str, type[LeadPersonKeyShreddedV1 | SalesPersonKeyShreddedV1]] = {
    "leads": LeadPersonKeyShreddedV1,
    "sales": SalesPersonKeyShreddedV1,
}


class PersonKeyPending(Exception):
    """The event's person key has not reached this department yet: retry the event later."""


class UnreadableSeal(Exception):
    """A sealed value that its key does not open (tampered, or not sealed for this person)."""


# -- waiting for a key: woken when this process stores one -----------------------------------
# The key record and the event it opens are published together, but the key topic is read by a
# consumer of its own, so the event often arrives a few milliseconds first. Its retry waits
# until this process commits a key (the key consumer's after-store hook calls ``key_stored``)
# or its backoff runs out (a key stored by another replica is only seen by trying again).
_key_waiters: set[asyncio.Future[None]] = set()


def key_stored(_envelope: object = None) -> None:
    """A key record (or its shredding) is committed here: wake every event waiting for one."""
    _wake_waiters()


def _wake_waiters() -> None:
    waiters = list(_key_waiters)
    _key_waiters.clear()
    for waiter in waiters:
        waiter.get_loop().call_soon_threadsafe(_wake, waiter)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def until_key_stored(timeout: float) -> bool:
    """Wait until this process stores or fetches a key (True), or ``timeout`` seconds (False:
    the caller just tries again)."""
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    _key_waiters.add(waiter)
    try:
        await asyncio.wait_for(waiter, timeout)
        return True
    except TimeoutError:
        return False
    finally:
        _key_waiters.discard(waiter)


# -- keys fetched, not stored yet: a sealed event opens with them at once ----------------------
# The key consumer registers each issued key as it classifies its record (``key_fetched``, its
# ``on_classified`` hook), before its own transaction stores it. A sealed event of this process
# whose held key is not in the database yet opens with the fetched one instead of waiting for
# that transaction (a fetch pause, four round trips and a majority commit on the handoff's
# latency: docs/performance.md, "Eleventh session, latency"); the hash it learns is stored with
# its effect in a ``learned:`` document, never in the held key's, so the key consumer stays the
# only writer of held keys and the two transactions never conflict. A shredding record fetched
# withdraws the key (a re-sent key after it stays withdrawn); an erasure request finds the
# person by the learned hash and leaves a shredding marker the key's storing then keeps.
FETCHED_LIMIT = 4096  # keys (about 100 bytes each) kept after their fetch, the oldest dropped
_fetched: OrderedDict[str, bytes | None] = OrderedDict()  # held id -> key, None: withdrawn


def key_fetched(envelope: Envelope, event: Event) -> None:
    """The key consumer classified ``event``: an issued key is usable from now on, a shredded
    one no longer (wakes the events waiting for a key)."""
    if isinstance(event, LeadPersonKeyIssuedV1 | SalesPersonKeyIssuedV1):
        held_id = _held_id(envelope.source, event.person_id)
        if held_id in _fetched and _fetched[held_id] is None:
            return  # shredded: never brought back
        try:
            _remember(held_id, decode_key(event.key))
        except ValueError:
            return  # its handler dead-letters it
        _wake_waiters()
    elif isinstance(event, LeadPersonKeyShreddedV1 | SalesPersonKeyShreddedV1):
        _remember(_held_id(envelope.source, event.person_id), None)


def _remember(held_id: str, key: bytes | None) -> None:
    _fetched[held_id] = key
    _fetched.move_to_end(held_id)
    while len(_fetched) > FETCHED_LIMIT:
        _fetched.popitem(last=False)


def _fetched_doc(held_id: str) -> Doc | None:
    """A held key's document as the fetched key gives it (not stored: ``fetched``), or None."""
    key = _fetched.get(held_id)
    if key is None:
        return None
    return {"_id": held_id, "key": key, "person_hashes": [], "fetched": True}


def _learned_id(held_id: str) -> str:
    return "learned:" + held_id


# -- pure: the cipher ------------------------------------------------------------------------


@dataclass(frozen=True)
class PersonFields:
    """What is sealed of a person: the values erasure must make unreadable."""

    email: str
    name: str
    phone: str | None = None


def new_key() -> bytes:
    return AESGCM.generate_key(bit_length=KEY_BYTES * 8)


def _aad(person_id: str, owner: str) -> bytes:
    return f"{owner}\x00{person_id}".encode()


def seal(key: bytes, person_id: str, owner: str, fields: PersonFields) -> SealedPerson:
    """One AES-GCM call: the fields' compact JSON, bound to the person and the key's owner."""
    return SealedPerson.model_validate(_seal_wire(AESGCM(key), person_id, owner, fields))


def _seal_wire(
    cipher: AESGCM, person_id: str, owner: str, fields: PersonFields, nonce: bytes | None = None
) -> Doc:
    """:func:`seal` as the wire dict (the emit path: no model built per person); ``nonce``
    a fresh random one (a batch draws its nonces in one call), else drawn here."""
    nonce = os.urandom(NONCE_BYTES) if nonce is None else nonce
    plain: dict[str, str] = {"e": fields.email, "n": fields.name}
    if fields.phone is not None:
        plain["p"] = fields.phone
    # Compact UTF-8 JSON by pydantic-core's encoder: a quarter of json's CPU per person (what
    # open_sealed parses back: the same values, whatever the escapes).
    data = pydantic_core.to_json(plain)
    sealed = cipher.encrypt(nonce, data, _aad(person_id, owner))
    return {
        "person_id": person_id,
        "key_owner": owner,
        "nonce": base64.b64encode(nonce).decode(),
        "ciphertext": base64.b64encode(sealed).decode(),
    }


def open_sealed(key: bytes, sealed: SealedPerson) -> PersonFields:
    try:
        nonce = base64.b64decode(sealed.nonce, validate=True)
        data = base64.b64decode(sealed.ciphertext, validate=True)
        # pydantic-core's parser (0.26 against json.loads' 1.75 us a person; every opened event),
        # its string cache off: an opened person's values are not kept in a process-wide cache.
        plain = pydantic_core.from_json(
            AESGCM(key).decrypt(nonce, data, _aad(sealed.person_id, sealed.key_owner)), cache_strings=False
        )
        return PersonFields(email=str(plain["e"]), name=str(plain["n"]), phone=plain.get("p"))
    except (InvalidTag, ValueError, KeyError, TypeError) as exc:
        raise UnreadableSeal(f"person {sealed.person_id}: {type(exc).__name__}") from None


def erased_fields(person_id: str) -> PersonFields:
    """What an event of a shredded person opens to: stand-ins derived from the person id alone."""
    digest = hashlib.sha256(person_id.encode()).hexdigest()
    return PersonFields(email=erased_email(digest), name=erased_name(digest))


def encode_key(key: bytes) -> str:
    return base64.b64encode(key).decode()


def decode_key(text: str) -> bytes:
    key = base64.b64decode(text, validate=True)
    if len(key) != KEY_BYTES:
        raise ValueError("a person key is 32 bytes")
    return key


# -- pure: which events are sealed, and how ----------------------------------------------------


def _stand_in(contact: Doc, person_id: str) -> Doc:
    return {**contact, "email": sealed_email(person_id), "name": SEALED_NAME, "phone": None}


@dataclass(frozen=True)
class Rule:
    """A plaintext version and its sealed version: the people in a payload, and the payload
    with their values replaced by stand-ins and sealed (``seals`` in the people's order)."""

    sealed_version: int
    people: Callable[[Doc], list[PersonFields]]
    apply: Callable[[Doc, list[Doc]], Doc]
    # A handoff another department opens: its people's keys go on the key topic with it.
    opened_by_holders: bool = True


def _nobody(_p: Doc) -> list[PersonFields]:
    return []


def _captured_withheld(p: Doc, seals: list[Doc]) -> Doc:
    """``lead.captured`` v3 with stand-ins and nothing sealed: nobody opens a captured event
    (analytics needs no personal field, no holder reads it), so the person is not put on the
    log at all, not even sealed, and no key is made for it (docs/governance.md section 3, the
    twenty-first session's decision). The stand-ins come from the lead id, which the event
    carries anyway: never from the e-mail or the name (a hash of either is the person's
    pseudonym, which no erasure takes off the log), and the same for every capture of the lead."""
    return {**p, "email": sealed_email(p["lead_id"]), "name": SEALED_NAME}


def _contact_fields(c: Doc) -> PersonFields:
    return PersonFields(email=c["email"], name=c["name"], phone=c.get("phone"))


def _qualified_sealed(p: Doc, seals: list[Doc]) -> Doc:
    return {**p, "contact": _stand_in(p["contact"], seals[0]["person_id"]), "sealed_contact": seals[0]}


def _won_sealed(p: Doc, seals: list[Doc]) -> Doc:
    contacts = [_stand_in(c, s["person_id"]) for c, s in zip(p["contacts"], seals, strict=True)]
    return {**p, "contacts": contacts, "sealed_contacts": seals}


SEAL_RULES: dict[tuple[str, int], Rule] = {
    # Nobody opens lead.captured (analytics needs no personal field): stand-ins only, no seal,
    # no key (a person's key is made at their first qualification, the first event opened).
    (LeadCapturedV2.event_type, 2): Rule(3, _nobody, _captured_withheld, opened_by_holders=False),
    (LeadQualifiedV1.event_type, 1): Rule(2, lambda p: [_contact_fields(p["contact"])], _qualified_sealed),
    (DealWonV2.event_type, 2): Rule(3, lambda p: [_contact_fields(c) for c in p["contacts"]], _won_sealed),
}


# -- the producer's side: in the transaction that stores the events ----------------------------


def _owned_id(owner: str, digest: str) -> str:
    # Deterministic per person: two transactions making the same person's key conflict (a
    # retried write conflict), never store two keys.
    return f"own:{owner}:{digest}"


def _held_id(owner: str, person_id: str) -> str:
    return f"held:{owner}:{person_id}"


async def seal_emitted(db: Any, tx: Any) -> None:
    """Replace ``tx.emitted``'s plaintext events by their sealed versions (same event ids),
    making (and emitting) the keys of people this department has none for yet.

    ``db`` is the plain database (key documents are never audited: no key in the audit log).
    A department that owns no key topic (``_ISSUED``) has nothing to seal.
    """
    owner = tx.source
    if owner not in _ISSUED:
        return
    todo = [
        (i, SEAL_RULES[(env.event_type, env.schema_version)])
        for i, env in enumerate(tx.emitted)
        if (env.event_type, env.schema_version) in SEAL_RULES
    ]
    if not todo:
        return
    people = {i: rule.people(tx.emitted[i].payload) for i, rule in todo}
    # One HMAC each; none for lead.captured (stand-ins only: nothing below finds or makes a key).
    digests = {p.email: email_hash(p.email) for ps in people.values() for p in ps}
    # The keys a holder will need: marked shared by the lookup itself where it can (_owned_key).
    sharing = {digests[p.email] for i, rule in todo if rule.opened_by_holders for p in people[i]}
    keys = _found_ahead(tx, set(digests.values()), sharing)
    if len(keys) < len(set(digests.values())):
        keys.update(await _owned_keys(db, tx, owner, set(digests.values()) - keys.keys(), sharing))
    shared: list[tuple[str, _Owned]] = []
    nonces = _random_pieces(NONCE_BYTES, sum(len(ps) for ps in people.values()))  # one call
    for i, rule in todo:
        env = tx.emitted[i]
        seals = []
        for person in people[i]:
            owned = keys[digests[person.email]]
            seals.append(_seal_wire(owned.cipher, owned.person_id, owner, person, next(nonces)))
            if rule.opened_by_holders:
                shared.append((digests[person.email], owned))
        payload = rule.apply(env.payload, seals)
        # Not validated again, as model_copy (half its CPU: crm_contracts.envelope.replaced).
        tx.emitted[i] = replaced(env, schema_version=rule.sealed_version, payload=payload)
    if shared:
        first = min(i for i, rule in todo if rule.opened_by_holders)
        await _share(db, tx, owner, shared, before=first)


def people_to_seal(owner: str, events: Iterable[Event]) -> list[tuple[PersonFields, bool]]:
    """The people whose keys ``events`` will be sealed with once emitted by ``owner``, each with
    whether a holder opens the event (its key is then shared): none when nothing is sealed."""
    if owner not in _ISSUED:
        return []
    people: list[tuple[PersonFields, bool]] = []
    for event in events:
        rule = SEAL_RULES.get((event.event_type, event.version))
        if rule is not None:
            people += [(person, rule.opened_by_holders) for person in rule.people(event.to_payload())]
    return people


async def keys_ahead(db: Any, tx: Any, people: list[tuple[PersonFields, bool]]) -> None:
    """Find (or make) the keys of ``people`` (:func:`people_to_seal`) before their events are
    emitted, and mark shared those a holder will need, as :func:`seal_emitted` would after the
    emit: it then seals with them (``tx.sealing_keys``) and makes no round trip of its own. A
    handler that knows its events before its last write sends this beside that write
    (``crm_platform.uow.MongoUnit.keys_beside``): a qualifying behaviour's key lookup was a round
    trip of its own between the emit and the outbox insert, on the handoff's way
    (docs/performance.md, twentieth session, p99leads). The same writes as there, in the same
    transaction: a key made here and not used (the transaction aborts) is not kept either."""
    owner = tx.source
    digests = {person.email: email_hash(person.email) for person, _ in people}
    sharing = {digests[person.email] for person, opened in people if opened}
    keys = await _owned_keys(db, tx, owner, set(digests.values()), sharing)
    unmarked = sorted(d for d in sharing if not keys[d].shared and not keys[d].marked)
    if unmarked:  # several people's keys found, not shared yet (one person's: marked by its lookup)
        ids = [_owned_id(owner, digest) for digest in unmarked]
        await db[KEYS].update_many({"_id": {"$in": ids}}, {"$set": {"shared": True}}, session=tx.session)
        for digest in unmarked:
            keys[digest].marked = True
    tx.sealing_keys.update({digest: (key, digest in sharing) for digest, key in keys.items()})


def _found_ahead(tx: Any, digests: set[str], sharing: set[str]) -> dict[str, _Owned]:
    """The keys among ``digests`` that :func:`keys_ahead` found in this attempt, each as the
    sealing needs it (one a holder needs: found marked shared)."""
    ahead: dict[str, tuple[_Owned, bool]] = tx.sealing_keys
    return {
        digest: found[0]
        for digest in digests
        if (found := ahead.get(digest)) is not None and (found[1] or digest not in sharing)
    }


def sealed_event(event: Event, owner: str) -> tuple[Event, list[KeyIssued]]:
    """``event``'s sealed version with a fresh key per person, and the key records to publish
    on ``owner``'s key topic: what a test producing a department's sealed events uses."""
    rule = SEAL_RULES[(event.event_type, event.version)]
    payload = event.to_payload()
    seals: list[Doc] = []
    issued: list[KeyIssued] = []
    for person in rule.people(payload):
        key, person_id = new_key(), os.urandom(16).hex()
        seals.append(_seal_wire(AESGCM(key), person_id, owner, person))
        issued.append(
            _ISSUED[owner](
                person_id=person_id,
                key=encode_key(key),
                issued_at=utcnow(),
                email_hash=email_hash(person.email),
            )
        )
    sealed = model_for(event.event_type, rule.sealed_version).model_validate(rule.apply(payload, seals))
    return sealed, issued


@dataclass
class _Owned:
    cipher: AESGCM
    person_id: str
    key: bytes
    shared: bool  # its key record is on the key topic already
    marked: bool = False  # its document says ``shared`` already (set by this transaction's lookup)


async def _owned_keys(
    db: Any, tx: Any, owner: str, digests: set[str], sharing: set[str]
) -> dict[str, _Owned]:
    """email hash -> the person's key, one lookup; the missing ones made and stored (their key
    record is emitted once an event a holder must open is sealed with them, ``sharing``:
    :func:`_share`)."""
    if len(digests) == 1:
        digest = next(iter(digests))
        return await _owned_key(db, tx, owner, digest, share=digest in sharing)
    found: dict[str, _Owned] = {}
    query = {"_id": {"$in": [_owned_id(owner, d) for d in digests]}}
    async for doc in db[KEYS].find(query, session=tx.session):
        key = bytes(doc["key"])
        # Keys made before sharing was deferred were published at once (no field).
        found[doc["email_hash"]] = _Owned(AESGCM(key), doc["person_id"], key, doc.get("shared", True))
    missing = sorted(digests - found.keys())
    if not missing:
        return found
    docs = _owned_docs(owner, missing)
    for doc in docs:
        key = bytes(doc["key"])
        doc["shared"] = doc["email_hash"] in sharing  # inserted marked: no update of it after
        found[doc["email_hash"]] = _Owned(AESGCM(key), doc["person_id"], key, False, marked=doc["shared"])
    await db[KEYS].insert_many(docs, session=tx.session)
    return found


async def _owned_key(db: Any, tx: Any, owner: str, digest: str, *, share: bool) -> dict[str, _Owned]:
    """One person's key (a single capture, a handoff): found or made in ONE round trip, an
    upsert that keeps the stored key (``$setOnInsert``) and answers the document as it now is.
    When a holder will open the event (``share``), the same upsert marks the key shared and
    answers it as it was before (not shared yet: its key record goes out, :func:`_share`), so
    the handoff's transaction needs no second write of the key (a round trip on its latency)."""
    new = _owned_doc(owner, digest)
    update: Doc = {"$setOnInsert": new}
    if share:
        update = {"$setOnInsert": {k: v for k, v in new.items() if k != "shared"}, "$set": {"shared": True}}
    doc = await db[KEYS].find_one_and_update(
        {"_id": _owned_id(owner, digest)},
        update,
        upsert=True,
        return_document=ReturnDocument.BEFORE if share else ReturnDocument.AFTER,
        session=tx.session,
    )
    doc = new if doc is None else doc  # None: made by this upsert (answered as before it)
    key = bytes(doc["key"])
    return {digest: _Owned(AESGCM(key), doc["person_id"], key, doc.get("shared", True), marked=share)}


def _owned_doc(owner: str, digest: str) -> Doc:
    """A new key of the person with this email hash, kept by ``owner`` (its ``_id`` aside)."""
    return {
        "owner": owner,
        "person_id": new_person_id(),
        "email_hash": digest,
        "key": Binary(new_key()),
        "shared": False,
        "created_at": utcnow(),
    }


def new_person_id() -> str:
    """A new person's id (32 hex digits): time-ordered (a version-7 UUID's bits), so the key
    documents' ``by_person_id`` index takes new people at its edge, not on a random page
    (docs/performance.md, "Tenth session, import"). Not a secret: it names the person on the
    log, as the random id before it did."""
    return f"{uuid7_int():032x}"


def _random_pieces(size: int, count: int) -> Iterator[bytes]:
    """``count`` fresh random byte strings of ``size``, drawn from the OS in ONE call."""
    pool = os.urandom(size * count)
    return (pool[n : n + size] for n in range(0, size * count, size))


def _owned_docs(owner: str, digests: list[str]) -> list[Doc]:
    """:func:`_owned_doc` for many people (their ids and keys each drawn in one call, one clock read)."""
    now = utcnow()
    keys = _random_pieces(KEY_BYTES, len(digests))
    return [
        {
            "_id": _owned_id(owner, digest),
            "owner": owner,
            "person_id": new_person_id(),
            "email_hash": digest,
            "key": Binary(next(keys)),
            "shared": False,
            "created_at": now,
        }
        for digest in digests
    ]


async def _share(db: Any, tx: Any, owner: str, keys: list[tuple[str, _Owned]], *, before: int) -> None:
    """Emit the key record of each key not shared yet (same transaction as the handoff that
    needs it), and note it shared: a person only captured never has a key on the topic.

    The records go ahead of the first event emitted at ``before`` (the first that a holder
    opens), so the relay publishes each key before the events sealed with it and the holder
    usually has it when they arrive instead of waiting for it; and they share one outbox
    row (``batched``; erasure zeroes a key inside a batch row: :func:`_drop_key_rows`)."""
    fresh = {digest: k for digest, k in keys if not k.shared}
    if not fresh:
        return
    now = utcnow()
    for n, (digest, k) in enumerate(fresh.items()):
        k.shared = True
        # With the person's hash: the holder's copy is stored with it (no update when it opens).
        record = _ISSUED[owner](
            person_id=k.person_id, key=encode_key(k.key), issued_at=now, email_hash=digest
        )
        tx.emit(record, batched=True, before=before + n)
    ids = [_owned_id(owner, digest) for digest, k in fresh.items() if not k.marked]
    if ids:
        await db[KEYS].update_many({"_id": {"$in": ids}}, {"$set": {"shared": True}}, session=tx.session)


# -- the holders' side -----------------------------------------------------------------------


def key_handlers() -> dict[str, Handler]:
    """The consumer handlers of the key topics: keep a copy of an issued key, replace it by a
    marker when it is shredded (a key issued again after its shredding, a late re-send, stays
    shredded). Idempotent by their own writes (a key held already is not inserted again, a
    shredding marker keeps its first time), so their consumer keeps no processed-events ledger
    (``ConsumerConfig.ledger``). A record alone is one write of one document (an upsert), a batch
    one unordered insert of its keys where none is held (and a shredding's upsert in its place),
    so they need no transaction either (``ConsumerConfig.one_write_alone``)."""
    handlers: dict[str, Handler] = {}
    for issued in _ISSUED.values():
        handlers[issued.event_type] = _on_issued
    for shredded in _SHREDDED.values():
        handlers[shredded.event_type] = _on_shredded
    return handlers


async def _on_issued(tx: Any, event: LeadPersonKeyIssuedV1, envelope: Envelope) -> None:
    doc_id = _held_id(envelope.source, event.person_id)
    doc = {
        "_id": doc_id,
        "owner": envelope.source,
        "person_id": event.person_id,
        "key": Binary(decode_key(event.key)),
        # No person_hashes until one is learned (_open's $addToSet makes the list): an empty list
        # is a by_person_hash entry of its own (sparse indexes keep it), which the learning then
        # moves: three index writes per held key and its first hash instead of one.
        "received_at": utcnow(),
    }
    digest = vars(event).get("email_hash")  # v2: the owner's hash of the person's e-mail
    if digest:
        # Stored with the key: the event it opens finds its hash known and writes nothing
        # (a drained handoff's update of its held key; docs/performance.md, sixteenth session).
        doc["person_hashes"] = [digest]
    batch = getattr(tx, "batch", None)
    if batch is None or len(batch.events) == 1:
        # A record alone (the 25/s handoff's key): one upsert that inserts the key only when
        # none is held, instead of a read and an insert (one round trip fewer; a held key or a
        # shredding marker is left as it is). The key consumer sends it without a transaction
        # (``ConsumerConfig.one_write_alone``): it is the record's whole effect.
        fields = {k: v for k, v in doc.items() if k != "_id"}
        await tx.db[KEYS].update_one(
            {"_id": doc_id}, {"$setOnInsert": fields}, upsert=True, session=tx.session
        )
        return
    if getattr(tx, "outside_transaction", False):
        # The key consumer's batch, without a transaction (``Store.one_write``): no read of the
        # held keys; the batch's keys go in one unordered insert where none is held (a held key
        # or a shredding marker refuses its copy: never brought back). A drained handoff's key:
        # no query, no commit, no transaction (docs/performance.md, twenty-first session, drainkeys).
        tx.insert_later(KEYS, doc)
        return
    held = await _held(tx, doc_id)
    if held.get(doc_id) is not None:
        return  # held already, or shredded: never brought back
    held[doc_id] = doc  # a second record of this key later in the batch finds it
    tx.insert_later(KEYS, doc)  # with the batch's other keys: one insert before the commit


async def _on_shredded(tx: Any, event: LeadPersonKeyShreddedV1, envelope: Envelope) -> None:
    held_id = _held_id(envelope.source, event.person_id)
    await _recheck_if_live(tx, held_id)
    await _mark_shredded(tx, {"_id": held_id}, upsert=True)


async def _recheck_if_live(tx: Any, held_id: str) -> None:
    """The owner's shredding record finds the key still live here: this holder's erasure of the
    person did not see it (the key came after it: a key consumer far behind, or the request not
    handled here yet), so an event opened with it may have stored the person in plain text. The
    person's hashes get a recheck of their own (``crm_platform.erasure.record_key_recheck``),
    recorded before the marker: a record delivered again after a crash between the two finds
    the key live again and records it again (idempotent). One read per shredding record, none
    per handoff."""
    from crm_platform import erasure  # it imports this module

    if getattr(tx, "batch", None) is not None:
        await tx.flush_inserts(KEYS)  # the batch's key, if this record follows it in the batch
    live = await tx.db[KEYS].find_one({"_id": held_id, "key": {"$exists": True}}, session=tx.session)
    if live is not None:
        await erasure.record_key_recheck(tx, live, erasure.wall_clock())


async def _mark_shredded(tx: Any, query: Doc, *, upsert: bool = False, hashes: Iterable[str] = ()) -> int:
    """The key of ``query`` replaced by a shredding marker (``hashes``: learned ones it keeps).

    The marker keeps the person's hashes: an erasure request that arrives after the owner's
    shredding record still finds, through it, the records that name the person by their held
    key (``crm_platform.erasure``, ``Target.by_held_key``: sales' inbox items of sealed
    handoffs). A hash is not personal data on its own: the erased stand-ins are derived from it."""
    batch = getattr(tx, "batch", None)
    if batch is not None:
        # The batch's deferred key inserts and learned hashes land first (the query may name
        # them), and its view of the held keys is read again after this change.
        await tx.flush_inserts(KEYS)
        batch.forget(HELD_KEYS)
    # $min: a repeated shredding (a redelivered record: the key consumer keeps no ledger) leaves
    # the marker as it was.
    update: Doc = {"$set": {"shredded": True}, "$min": {"shredded_at": utcnow()}, "$unset": {"key": ""}}
    kept = sorted(set(hashes))
    if kept:
        update["$addToSet"] = {"person_hashes": {"$each": kept}}
    if upsert:
        await tx.db[KEYS].update_one(query, update, upsert=True, session=tx.session)
        return 1
    result = await tx.db[KEYS].update_many(query, update, session=tx.session)
    return int(result.modified_count)


async def _open(tx: Any, sealed: SealedPerson) -> PersonFields:
    if isinstance(tx, OwnerKeys):
        return await tx.open(sealed)
    held_id = _held_id(sealed.key_owner, sealed.person_id)
    view = await _held(tx, held_id)
    doc = view.get(held_id)
    if doc is None:
        doc = _fetched_doc(held_id)  # fetched by this process's key consumer, not stored yet
        if doc is None:
            raise PersonKeyPending(f"no key yet for person {sealed.person_id} of {sealed.key_owner}")
        view[held_id] = doc  # the batch's later events of this person use it too
    if doc.get("shredded"):
        return erased_fields(sealed.person_id)
    fields = open_sealed(bytes(doc["key"]), sealed)
    digest = email_hash(fields.email)
    hashes = doc.setdefault("person_hashes", [])
    if digest not in hashes:
        # The holder learns whose key it is: an erasure request (a hash) then finds its copy.
        hashes.append(digest)  # the batch's copy: a later event of this person adds nothing
        learn = _learning(held_id, digest, fetched=bool(doc.get("fetched")))
        if getattr(tx, "batch", None) is not None:
            tx.update_later(KEYS, learn)  # with the batch's others: one bulk write before the commit
        else:
            await tx.db[KEYS].bulk_write([learn], session=tx.session)
    return fields


def _learning(held_id: str, digest: str, *, fetched: bool) -> UpdateOne:
    """The write that stores a learned hash: into the held key, or, for a key opened as fetched
    (the key consumer stores the held key), into the person's ``learned:`` document."""
    if not fetched:
        return UpdateOne({"_id": held_id}, {"$addToSet": {"person_hashes": digest}})
    # Only the held key's id besides the hash: not a key document (no owner, no person_id).
    update = {"$addToSet": {"person_hashes": digest}, "$setOnInsert": {"held_id": held_id}}
    return UpdateOne({"_id": _learned_id(held_id)}, update, upsert=True)


HELD_KEYS = "shredding.held_keys"  # a consumer batch's held key documents (crm_platform.batch)


async def _held(tx: Any, held_id: str) -> dict[str, Doc | None]:
    """The held key documents by id (None: not here), ``held_id``'s among them.

    In a consumer's batch (``tx.batch``) the keys of EVERY sealed event and key record of the
    batch are read with one ``$in`` query, and the batch's own inserts and learned hashes
    are kept in that view; a key asked for outside it (or outside a batch) is read alone.
    The transaction's snapshot makes either read the same.
    """
    batch = getattr(tx, "batch", None)
    view: dict[str, Doc | None] = {}
    if batch is not None:
        view = batch.peek(HELD_KEYS)
        if view is None:
            view = await batch.memo(HELD_KEYS, lambda: _load_held(tx, _batch_held_ids(batch)))
        if held_id in view:
            return view
    view.update(await _load_held(tx, {held_id}))
    return view


def _batch_held_ids(batch: Any) -> set[str]:
    """The held key ids a batch's events name: their sealed people's and their key records'."""
    ids = {_held_id(s.key_owner, s.person_id) for event, _ in batch.events for s in _seals(event)}
    ids.update(
        _held_id(envelope.source, event.person_id)
        for event, envelope in batch.events
        if isinstance(event, LeadPersonKeyIssuedV1 | SalesPersonKeyIssuedV1)
    )
    return ids


async def _load_held(tx: Any, ids: set[str]) -> dict[str, Doc | None]:
    view: dict[str, Doc | None] = dict.fromkeys(ids)
    if ids:
        async for doc in tx.db[KEYS].find({"_id": {"$in": sorted(ids)}}, session=tx.session):
            view[doc["_id"]] = doc
    return view


@dataclass(frozen=True)
class OwnerKeys:
    """Opens sealed values with the owner's own keys (``db`` is the owner's database): what a
    test, or an operator with the owner's database, uses to read what a department sealed."""

    db: Any

    async def open(self, sealed: SealedPerson) -> PersonFields:
        query = {"person_id": sealed.person_id, "owner": sealed.key_owner, "email_hash": {"$exists": True}}
        doc = await self.db[KEYS].find_one(query)
        if doc is None:
            raise PersonKeyPending(f"{sealed.key_owner} holds no key for person {sealed.person_id}")
        return open_sealed(bytes(doc["key"]), sealed)


def _plain(contact: Doc, fields: PersonFields) -> Doc:
    return {**contact, "email": fields.email, "name": fields.name, "phone": fields.phone}


async def open_event(tx: Any, event: Event) -> Event:
    """The plaintext version of a sealed event (the version its handlers were written for);
    any other event as it is. ``tx`` is the consumer's transaction (the held keys), or
    :class:`OwnerKeys`."""
    if isinstance(event, DealWonV2) and event.version == 3:
        payload = event.to_payload()
        sealed = payload.pop("sealed_contacts")
        if sealed:
            opened = [await _open(tx, SealedPerson.model_validate(s)) for s in sealed]
            payload["contacts"] = [_plain(c, f) for c, f in zip(payload["contacts"], opened, strict=True)]
        return DealWonV2.model_validate(payload)
    if isinstance(event, LeadQualifiedV2):
        return await _open_qualified(tx, event)
    if isinstance(event, LeadCapturedV2) and event.version == 3:
        payload = event.to_payload()
        sealed = payload.pop("sealed_person")
        if sealed is not None:
            fields = await _open(tx, SealedPerson.model_validate(sealed))
            payload.update(email=fields.email, name=fields.name)
        return LeadCapturedV2.model_validate(payload)
    return event


async def _open_qualified(tx: Any, event: LeadQualifiedV2) -> LeadQualifiedV1:
    """``lead.qualified`` v1 from a v2 handoff, which classification validated whole already:
    its fields are kept as they are, and only the opened contact (values from the cipher) is
    validated; not the handoff dumped to JSON and validated again (12.7 -> 7.8 us of the
    drain's CPU per handoff, docs/performance.md, twelfth session, drain)."""
    given = vars(event)  # a missing attribute through getattr costs pydantic an exception
    fields = {name: given[name] for name in _V1_FIELDS}
    if event.sealed_contact is not None:
        opened = await _open(tx, event.sealed_contact)
        role = event.contact.role
        fields["contact"] = _validate_contact(
            {"name": opened.name, "email": opened.email, "phone": opened.phone, "role": role}
        )
    return _v1(fields, event.model_fields_set - {"sealed_contact"})


_V1_FIELDS = tuple(LeadQualifiedV1.model_fields)
# ``Contact.model_validate`` without its Python frame checking its options (the same validator).
_validate_contact = Contact.__pydantic_validator__.validate_python
# Whether LeadQualifiedV1 is built by model_construct's last steps alone: no alias to look for,
# no post-init (every field is given, so none of its defaults is needed either).
_V1_PLAIN = LeadQualifiedV1.__pydantic_post_init__ is None and all(
    f.alias is None and f.validation_alias is None for f in LeadQualifiedV1.model_fields.values()
)


def _v1(fields: dict[str, Any], fields_set: set[str]) -> LeadQualifiedV1:
    """``LeadQualifiedV1.model_construct(fields_set, **fields)`` given every field, without its
    search of each field's aliases and default: 5.0 -> 1.9 us per drained handoff with the dict
    (docs/performance.md, nineteenth session, drainsales)."""
    if not _V1_PLAIN or len(fields) != len(_V1_FIELDS):
        return LeadQualifiedV1.model_construct(fields_set, **fields)
    model = LeadQualifiedV1.__new__(LeadQualifiedV1)
    object.__setattr__(model, "__dict__", fields)
    object.__setattr__(model, "__pydantic_fields_set__", fields_set)
    object.__setattr__(model, "__pydantic_extra__", None)
    object.__setattr__(model, "__pydantic_private__", None)
    return model


def _seals(event: Event) -> list[Any]:
    """The sealed people an event carries (none for a plaintext version)."""
    fields = vars(event)  # a missing attribute through getattr costs pydantic an exception
    found = [fields.get("sealed_person"), fields.get("sealed_contact")]
    found.extend(fields.get("sealed_contacts") or ())
    return [s for s in found if s is not None]


async def until_keys_fetched(events: Iterable[Event], seconds: float) -> None:
    """Wait, at most ``seconds``, while a held key these events need is not fetched by this
    process and its key consumer has a fetch on its way (``kafka.records_fetch_pending``: begun,
    or its pause ended by these very events' fetch): woken as keys are fetched, or when that fetch
    comes back without records. Asks the database nothing; a key still not fetched after it is
    asked for there (:func:`keys_missing`). A live handoff's key is published with it and fetched
    as it is read, so its check waits for that fetch instead of a read of the held keys that the
    key's arrival made moot most of the time (docs/performance.md, eighteenth session, p99sales)."""
    wanted = {_held_id(s.key_owner, s.person_id) for e in events for s in _seals(e)}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while records_fetch_pending() and any(_fetched.get(w) is None for w in wanted):
        left = deadline - loop.time()
        if left <= 0:
            return
        waiter: asyncio.Future[None] = loop.create_future()
        _key_waiters.add(waiter)
        watch_records_fetches(waiter)
        timer = loop.call_later(left, _wake, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            _key_waiters.discard(waiter)
            unwatch_records_fetches(waiter)


async def keys_missing(db: Any, events: Iterable[Event]) -> int:
    """How many of the held keys these events need this department does not have yet (one
    query for a whole batch, none when this process fetched them all; a shredding marker
    counts as had: it opens to stand-ins)."""
    wanted = {_held_id(s.key_owner, s.person_id) for e in events for s in _seals(e)}
    wanted = {w for w in wanted if _fetched.get(w) is None}  # a fetched key opens them (_open)
    if not wanted:
        return 0
    have = {d["_id"] async for d in db[KEYS].find({"_id": {"$in": sorted(wanted)}}, {"_id": 1})}
    # Fetched meanwhile (its wake-up came before the caller waits): counted as had, not waited for.
    return sum(1 for w in wanted - have if _fetched.get(w) is None)


def unsealing(handler: Handler) -> Handler:
    """``handler`` given the plaintext version of a sealed event (:func:`open_event`). The
    loads ``handler`` names (``crm_platform.batch.with_preload``, e.g. sales' inbox items of
    the lead) are started first, so they run beside the read of the held keys instead of after
    it (once the transaction has begun: ``Batch.begun``)."""
    preload = preload_of(handler)

    async def opened(tx: Any, event: Any, envelope: Envelope) -> None:
        if preload is not None and getattr(tx, "batch", None) is not None:
            preload(tx)
        try:
            plain = await open_event(tx, event)
        except UnreadableSeal as exc:
            # Imported here: the consumer imports mongo, which imports this module.
            from crm_platform.consumer import DeadLetter

            raise DeadLetter("unreadable_person", str(exc)) from None
        await handler(tx, plain, envelope)

    return opened


def key_group(group_id: str) -> str:
    """The consumer group a key holder reads the key topics with, beside its own ``group_id``."""
    return f"{group_id}.person-keys"


def key_topics(service: str) -> tuple[str, ...]:
    """The key topics ``service`` holds keys from (``crm_contracts.access.PERSON_KEYS``)."""
    return PERSON_KEYS.get(service, ())


# -- erasure ---------------------------------------------------------------------------------


def held_key_of(envelope: Envelope) -> str | None:
    """The id of the held key (``held:<owner>:<person id>``) that opens the one person a sealed
    ``envelope`` carries (``lead.qualified`` v2's ``sealed_contact``), None for any other: what
    a record stored from its opened values names its person by instead of their hash
    (``crm_platform.erasure``, ``Target.by_held_key``). By the time that record commits, the
    person's hash is in the held key or in its ``learned:`` document (:func:`_open`)."""
    sealed = envelope.payload.get("sealed_contact")
    if not isinstance(sealed, dict):
        return None
    owner, person_id = sealed.get("key_owner"), sealed.get("person_id")
    if not isinstance(owner, str) or not isinstance(person_id, str):
        return None
    return _held_id(owner, person_id)


def is_held_key_id(value: str) -> bool:
    """Whether ``value`` is a held key's id (:func:`held_key_of`), not a hash."""
    return value.startswith("held:")


async def held_keys_by_hash(tx: Any, digest: str) -> list[str]:
    """The ids of the held keys of the person with e-mail hash ``digest``: the copies (and
    shredding markers, which keep their hashes) that learned it, and those known by a
    ``learned:`` document (``person_keys.by_person_hash``, one query)."""
    if getattr(tx, "batch", None) is not None:
        await tx.flush_inserts(KEYS)  # the batch's learned hashes first
    query = {"person_hashes": digest}
    found = tx.db[KEYS].find(query, {"held_id": 1}, session=tx.session)
    ids = {str(doc.get("held_id") or doc["_id"]) async for doc in found}
    return sorted(i for i in ids if is_held_key_id(i))


async def shred(tx: Any, digests: Iterable[str]) -> int:
    """Destroy the keys of the people with these e-mail hashes; returns how many keys.

    The owner deletes its key, drops the key's outbox rows (the published ones are kept a
    week: they hold the key) and emits the shredding record; a holder replaces its copy by a
    marker (the owner's shredding record does the same when it arrives).
    """
    wanted = sorted({d for d in digests if d})
    if not wanted:
        return 0
    owner = tx.source
    destroyed = 0
    if owner in _SHREDDED:
        query = {"_id": {"$in": [_owned_id(owner, d) for d in wanted]}}
        async for doc in tx.db[KEYS].find(query, session=tx.session):
            await tx.db[KEYS].delete_one({"_id": doc["_id"]}, session=tx.session)
            await _drop_key_rows(tx, _ISSUED[owner].event_type, doc["person_id"])
            tx.emit(_SHREDDED[owner](person_id=doc["person_id"], shredded_at=utcnow()))
            destroyed += 1
    return destroyed + await _shred_held(tx, wanted)


async def _shred_held(tx: Any, wanted: list[str]) -> int:
    """A holder's copies of the people with these hashes replaced by shredding markers: those
    that learned a hash, and those of people known by a ``learned:`` document only (opened as
    fetched: a marker is left that the key's storing keeps; the fetched key is withdrawn)."""
    if getattr(tx, "batch", None) is not None:
        await tx.flush_inserts(KEYS)  # the batch's learned hashes first: the query may name them
    query = {"_id": {"$regex": "^learned:"}, "person_hashes": {"$in": wanted}}
    learned = [d async for d in tx.db[KEYS].find(query, session=tx.session)]
    ids = [str(d["held_id"]) for d in learned]
    for doc in learned:
        _remember(str(doc["held_id"]), None)
        # The marker takes the learned hashes (the learned document goes): still found by them.
        await _mark_shredded(tx, {"_id": doc["held_id"]}, upsert=True, hashes=doc.get("person_hashes", ()))
    if learned:
        await tx.db[KEYS].delete_many({"_id": {"$in": [d["_id"] for d in learned]}}, session=tx.session)
    held = {"_id": {"$regex": "^held:", "$nin": ids}, "person_hashes": {"$in": wanted}}
    return len(ids) + await _mark_shredded(tx, held)


async def _drop_key_rows(tx: Any, event_type: str, person_id: str) -> None:
    """The outbox rows holding the key (published rows stay a week): its own row goes; its item
    in a batch row (``crm_platform.mongo.outbox_rows``) stays in place, its key zeroed (the
    row's positions on the log stay aligned with its items, for the outbox audit), and the row
    says so (:data:`KEYS_ZEROED`): a relay holding the row as its process wrote it
    (``crm_platform.mongo.CommittedRows``) sees a field it did not write and reads it back;
    the rows handed to it are not published as written until it has read the pending rows again
    (``Tx.outbox_changed``: its commit wants a read)."""
    item = {"key": person_id, "event_type": event_type}
    tx.outbox_changed = True
    await tx.db[OUTBOX].delete_many(item, session=tx.session)
    async for row in tx.db[OUTBOX].find({BATCH_EVENTS: {"$elemMatch": item}}, session=tx.session):
        items = [
            _zero_key(i) if i.get("key") == person_id and i.get("event_type") == event_type else i
            for i in row[BATCH_EVENTS]
        ]
        await tx.db[OUTBOX].update_one(
            {"_id": row["_id"]}, {"$set": {BATCH_EVENTS: items, KEYS_ZEROED: utcnow()}}, session=tx.session
        )


ZERO_KEY = encode_key(bytes(KEY_BYTES))
# Set on a batch row whose key records erasure zeroed (when): never in a row as written.
KEYS_ZEROED = "keys_zeroed_at"


def _zero_key(item: Doc) -> Doc:
    envelope = item["envelope"]
    payload = {**envelope["payload"], "key": ZERO_KEY}
    if payload.get("email_hash") is not None:
        payload["email_hash"] = None  # a zeroed key names no one
    return {**item, "envelope": {**envelope, "payload": payload}}


async def ensure_indexes(db: Any) -> None:
    """A holder's copies by the hashes it learned (an erasure request), keys by person id."""
    await db[KEYS].create_index("person_hashes", name="by_person_hash", sparse=True)
    await db[KEYS].create_index("person_id", name="by_person_id")


def email_hashes(values: Iterable[str]) -> list[str]:
    """The hashes of the e-mails among an erased person's values (a request by record id)."""
    return [email_hash(v) for v in values if "@" in v and not is_erased_email(v)]
