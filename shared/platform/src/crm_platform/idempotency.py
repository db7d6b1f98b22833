"""Safe retries: ``Idempotency-Key`` on every POST, stored with the effect it guards.

A client that timed out cannot know whether its POST took effect. It retries
with the same ``Idempotency-Key`` header (any printable string up to 200
characters, e.g. a UUID) and gets the first answer back (status and body, with
``Idempotent-Replayed: true``), with no second effect.

The rules, for every service (:class:`IdempotencyMiddleware`, installed by the
app factory):

* A key is scoped to the service, the request path (``POST /leads/L1/behaviours``)
  and the authenticated principal (``sub``): other users' keys never collide
  with yours, and a key is only looked up after the bearer token verified.
* The key's record is inserted **in the same MongoDB transaction as the
  effect** (the first :meth:`crm_platform.mongo.Store.transaction` the request
  runs), so the effect and the key commit together or not at all. The answer
  is added to the record right after. Requests whose transaction never
  committed (validation errors, broken rules, the database down before the
  commit) leave no record: retrying them simply runs them.
* Same key, different request (other query or body; JSON bodies are compared
  canonically, so key order and spacing do not matter): 422
  ``idempotency_key_reused``. Same key while the first request is still
  running: 409 ``idempotency_in_progress``. A key whose effect committed but
  whose answer was lost (the process died, or the database failed between the
  commit and recording the answer): 409 ``idempotency_answer_lost``; the
  effect happened once, read the resource to see it.
* Records expire after ``CRM_IDEMPOTENCY_TTL_HOURS`` (TTL index on
  ``expires_at``); a key can be reused after that.
* A service may derive a default key for a route when the client sends none
  (``default_key``); leads does so for behaviours (see its README).
* A route whose handler's first step is its transaction (nothing it answers before that
  depends on stored state) may be keyed *on insert* (``insert_first``): its key is not read
  before the request runs; the claim's insert in the transaction finds it taken (the
  transaction aborts, nothing is kept) and the answer then comes from the record as above.
  One round trip fewer for every such request (a single qualifying behaviour made 11).
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import logging
import re
from collections import Counter
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from bson.binary import Binary
from crm_contracts import utcnow
from pymongo import ASCENDING, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException  # FastAPI's is a subclass (no FastAPI import)
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crm_platform.errors import Conflict

log = logging.getLogger("crm.idempotency")

COLLECTION = "idempotency_keys"
HEADER = "idempotency-key"
REPLAYED = "idempotent-replayed"
_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")


class InProgress(Conflict):
    code = "idempotency_in_progress"


class ClaimTaken(Exception):
    """A key claimed on insert (``Claim.looked_up`` False) was found taken by its insert: the
    transaction aborts and the middleware answers from the record."""


@dataclass
class Claim:
    """The key a request runs under, inserted by the request's first transaction."""

    id: str
    fingerprint: str
    path: str
    expires_at: datetime
    committed: bool = False
    in_transaction: bool = field(default=False, repr=False)
    # False: the record was not read before the request ran (``insert_first``); a taken key
    # raises ClaimTaken from the insert instead of InProgress.
    looked_up: bool = True


current_claim: ContextVar[Claim | None] = ContextVar("idempotency_claim", default=None)


# The claims of the requests a group transaction carries (a service's group commit: several
# requests' effects in one transaction, run outside any one request): it inserts each of them
# with the group's effects, as a request's own transaction inserts its claim.
group_claims: ContextVar[tuple[Claim, ...]] = ContextVar("idempotency_group_claims", default=())


def claims_now() -> list[Claim]:
    """The claims the transaction starting now inserts: its request's, else its group's (each
    not committed yet)."""
    claim = current_claim.get()
    claims = [claim] if claim is not None else list(group_claims.get())
    return [c for c in claims if not c.committed]


async def claim_in(db: AsyncDatabase[Any], session: AsyncClientSession, claims: list[Claim]) -> None:
    """Called by ``Store.transaction`` inside each attempt: insert the claims (:func:`claims_now`).

    A duplicate key means the same request committed before or concurrently: 409, no second
    effect; for a claim not read first (``looked_up`` False) :class:`ClaimTaken`, answered by
    the middleware from the record.
    """
    if not claims:
        return
    docs = [
        {
            "_id": claim.id,
            "fingerprint": claim.fingerprint,
            "path": claim.path,
            "created_at": utcnow(),
            "expires_at": claim.expires_at,
            "response": None,
        }
        for claim in claims
    ]
    try:
        if len(docs) == 1:
            await db[COLLECTION].insert_one(docs[0], session=session)
        else:
            await db[COLLECTION].insert_many(docs, session=session)
    except (DuplicateKeyError, BulkWriteError) as exc:
        if isinstance(exc, BulkWriteError) and not only_duplicate_keys(exc):
            raise
        if not all(claim.looked_up for claim in claims):
            raise ClaimTaken(claims[0].id) from None
        raise InProgress(
            "a request with this Idempotency-Key was carried out meanwhile; retry to get its answer"
        ) from None


def only_duplicate_keys(exc: BulkWriteError) -> bool:
    """Whether every write error of ``exc`` is a duplicate key (and there is at least one)."""
    errors = exc.details.get("writeErrors", [])
    return bool(errors) and all(e.get("code") == DUPLICATE_KEY for e in errors)


def only_duplicates_applied(exc: BulkWriteError) -> bool:
    """Whether an unordered insert or upsert refused only documents already there and had no
    write concern error: every other document is written, so the error may be ignored."""
    return only_duplicate_keys(exc) and not exc.details.get("writeConcernErrors")


DUPLICATE_KEY = 11000  # MongoDB's error code


async def ensure_indexes(db: AsyncDatabase[Any]) -> None:
    await db[COLLECTION].create_index([("expires_at", ASCENDING)], expireAfterSeconds=0, name="expires")


def canonical(body: bytes) -> bytes:
    try:
        return json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()
    except (ValueError, UnicodeDecodeError):
        return body


def fingerprint(query: bytes, body: bytes) -> str:
    h = hashlib.sha256()
    for part in (query, canonical(body)):
        h.update(len(part).to_bytes(8, "big") + part)
    return h.hexdigest()


DefaultKey = Callable[[str, bytes], tuple[str, timedelta] | None]
"""(path, body) -> a key and how long it holds, for a POST that came without a key; or None."""


@dataclass
class _Captured:
    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)


class IdempotencyMiddleware:
    """Replays the first answer to a retried POST; see the module docstring for the rules."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        service: str,
        ttl: timedelta,
        applies: Callable[[str], bool] = lambda _: True,
        default_key: DefaultKey | None = None,
        insert_first: Callable[[str], bool] = lambda _: False,
    ) -> None:
        self.app = app
        self.service = service
        self.ttl = ttl
        self.applies = applies
        self.default_key = default_key
        self.insert_first = insert_first
        # Claims being run in this process, by id: a key found taken while the same key runs
        # here is "in progress" (409), as a concurrent duplicate was before.
        self._running: Counter[str] = Counter()
        self._answers = _Answers()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not self.applies(scope["path"]):
            await self.app(scope, receive, send)
            return
        key = Headers(scope=scope).get(HEADER)
        if key is not None and not _KEY.match(key):
            message = "Idempotency-Key must be 1-200 printable ASCII characters"
            await _refuse(422, "validation_error", message, scope, receive, send)
            return
        if key is None and self.default_key is None:
            await self.app(scope, receive, send)
            return
        principal = _principal(scope, receive)
        if principal is None:  # no valid token: the route answers 401 itself
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        ttl = self.ttl
        if key is None and self.default_key is not None:
            key, ttl = self.default_key(scope["path"], body) or (None, ttl)
        store = getattr(getattr(scope["app"].state, "runtime", None), "store", None)
        if key is None or store is None:
            await self.app(scope, _replay(body), send)
            return
        path = scope["path"]
        claim = Claim(
            id=hashlib.sha256(f"{self.service}\nPOST {path}\n{principal}\n{key}".encode()).hexdigest(),
            fingerprint=fingerprint(scope.get("query_string", b""), body),
            path=path,
            expires_at=utcnow() + ttl,
        )
        collection = store.db[COLLECTION]
        on_insert = self.insert_first(path)
        if on_insert and await self._ran_unless_taken(collection, claim, scope, body, receive, send):
            return
        if await self._answered_from_record(collection, claim, scope, receive, send):
            return
        await self._run(collection, claim, scope, _replay(body), send)

    async def _ran_unless_taken(
        self, collection: Any, claim: Claim, scope: Scope, body: bytes, receive: Receive, send: Send
    ) -> bool:
        """Run the request without reading its key first (``insert_first``): False when its
        claim's insert found the key taken (nothing was kept); the record answers then."""
        claim.looked_up = False
        try:
            await self._run(collection, claim, scope, _replay(body), send)
        except ClaimTaken:
            claim.looked_up = True  # an expired record deleted: the run after it inserts as before
            if not self._running[claim.id]:
                return False
            # The same key runs in this process now (as a concurrent duplicate was told before).
            message = "a request with this Idempotency-Key is being carried out; retry to get its answer"
            await _refuse(409, InProgress.code, message, scope, receive, send)
        return True

    async def _answered_from_record(
        self, collection: Any, claim: Claim, scope: Scope, receive: Receive, send: Send
    ) -> bool:
        record = await collection.find_one({"_id": claim.id})
        if record is None:
            return False
        if record["expires_at"] <= utcnow():
            await collection.delete_one({"_id": claim.id, "expires_at": record["expires_at"]})
            return False
        if record["fingerprint"] != claim.fingerprint:
            message = "this Idempotency-Key was already used for a different request (other body or query)"
            await _refuse(422, "idempotency_key_reused", message, scope, receive, send)
        elif record.get("response") is None:
            message = (
                "the request with this Idempotency-Key was carried out, but its answer was not recorded; "
                "read the resource to see the effect (it happened once)"
            )
            await _refuse(409, "idempotency_answer_lost", message, scope, receive, send)
        else:
            await _send_recorded(record["response"], send)
        return True

    async def _run(self, collection: Any, claim: Claim, scope: Scope, receive: Receive, send: Send) -> None:
        captured = _Captured()

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                captured.status = message["status"]
                captured.headers = list(message.get("headers", []))
            elif message["type"] == "http.response.body":
                captured.body.extend(message.get("body", b""))
            await send(message)

        token = current_claim.set(claim)
        self._running[claim.id] += 1
        try:
            await self.app(scope, receive, capture)
        except ClaimTaken:
            if captured.status:  # never: the claim is the first write of the request
                raise RuntimeError("an Idempotency-Key was found taken after the answer began") from None
            raise
        finally:
            self._running[claim.id] -= 1
            if not self._running[claim.id]:
                del self._running[claim.id]
            current_claim.reset(token)
        if claim.committed:
            await self._record(collection, claim, captured)

    async def _record(self, collection: Any, claim: Claim, captured: _Captured) -> None:
        keep = [(k, v) for k, v in captured.headers if k.lower() in (b"content-type", b"location")]
        response = {
            "status": captured.status,
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in keep],
            "body": Binary(bytes(captured.body)),
        }
        try:
            answer = UpdateOne({"_id": claim.id}, {"$set": {"response": response}})
            await self._answers.record(collection, answer)
        except Exception:
            # The effect is committed; a retry is told its answer was lost (409), never re-run.
            log.exception("could not record the answer for an idempotent request")


class _Answers:
    """Committed requests' answers, each recorded in its key's record: alone when none is being
    written, else with every answer that came meanwhile in ONE ``bulk_write`` (a group commit's
    requests finish together: one round trip for the group instead of one each)."""

    def __init__(self, most: int = 500) -> None:
        self.most = most
        self.writes = 0  # round trips sent (tests)
        self._busy = False
        self._queued: list[tuple[UpdateOne, asyncio.Future[None]]] = []
        self._drainer: asyncio.Task[None] | None = None

    async def record(self, collection: Any, update: UpdateOne) -> None:
        if self._busy:
            done = asyncio.get_running_loop().create_future()
            self._queued.append((update, done))
            await done
            return
        self._busy = True
        try:
            self.writes += 1
            await collection.bulk_write([update])
        finally:
            if self._queued:  # their turn, in a context of their own (no request's)
                self._drainer = asyncio.create_task(self._drain(collection), context=contextvars.Context())
            else:
                self._busy = False

    async def _drain(self, collection: Any) -> None:
        try:
            while batch := self._queued[: self.most]:
                del self._queued[: len(batch)]
                self.writes += 1
                try:
                    await collection.bulk_write([update for update, _ in batch], ordered=False)
                except Exception as exc:  # noqa: BLE001 - each request logs it, as it did alone
                    _settle(batch, exc)
                else:
                    _settle(batch, None)
        finally:
            self._busy = False
            for _, done in self._queued:  # only when cancelled (shutting down)
                done.cancel()
            self._queued = []


def _settle(batch: list[tuple[UpdateOne, asyncio.Future[None]]], error: BaseException | None) -> None:
    for _, done in batch:
        if done.done():
            continue
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)


async def _refuse(status: int, code: str, message: str, scope: Scope, receive: Receive, send: Send) -> None:
    """The platform's error answer. Imported here: a process that only stores claims (the
    analytics worker, through ``crm_platform.mongo``) imports neither FastAPI nor the edge."""
    from crm_platform.edge import error_response

    await error_response(status, code, message)(scope, receive, send)


def _principal(scope: Scope, receive: Receive) -> str | None:
    from crm_platform.auth import principal_of

    try:
        principal = principal_of(Request(scope, receive))
    except HTTPException:
        return None
    return str(principal.user_id)


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.request":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(chunks)
        elif message["type"] == "http.disconnect":
            return b"".join(chunks)


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


async def _send_recorded(response: dict[str, Any], send: Send) -> None:
    body = bytes(response["body"])
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response["headers"]]
    headers += [(b"content-length", str(len(body)).encode()), (REPLAYED.encode(), b"true")]
    await send({"type": "http.response.start", "status": response["status"], "headers": headers})
    await send({"type": "http.response.body", "body": body})
