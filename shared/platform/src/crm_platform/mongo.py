"""This service's own MongoDB database, and the unit of work over it.

Every state change goes through :meth:`Store.transaction`: the handler's writes,
the events it emits (the outbox) and, for consumers, the processed-event ledger
commit together or not at all.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from datetime import timedelta
from typing import Any, TypeVar

import pymongo
from crm_contracts import HANDOFF_BY_EVENT_TYPE, Envelope, Event, envelope_for
from crm_contracts.registry import model_for
from opentelemetry.context import Context
from pymongo import ASCENDING, AsyncMongoClient
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from crm_platform import audit, tracing
from crm_platform.clock import simulated_now
from crm_platform.deadline import request_db_deadline
from crm_platform.idempotency import claim_in, current_claim
from crm_platform.idempotency import ensure_indexes as ensure_idempotency_indexes
from crm_platform.logging import correlation_id_var, request_id_var
from crm_platform.money import TYPE_REGISTRY

log = logging.getLogger("crm.store")
T = TypeVar("T")
Doc = dict[str, Any]

OUTBOX = "outbox"
PROCESSED = "processed_events"
# Handoffs this service sent, tracked until their receipt arrives (crm_platform.receipts).
HANDOFFS_SENT = "handoffs_sent"

# The envelope being handled, so events emitted in reaction name it as their cause.
causation_var: ContextVar[Envelope | None] = ContextVar("causation", default=None)


def connect(uri: str, app_name: str, *, timeout_seconds: float | None = None) -> AsyncMongoClient[Doc]:
    """The service's client. Decimal <-> Decimal128, so money is stored exactly (crm_platform.money).

    ``timeout_seconds`` (``CRM_DB_DEADLINE_SECONDS`` in services) is PyMongo's client-side
    operation timeout (CSOT, ``timeoutMS``): every operation, server selection included,
    gives up after it, and the server is sent the time left as ``maxTimeMS`` so it gives
    up too; the error becomes 503 + Retry-After at the HTTP edge. Whole transactions are
    bounded by the request's deadline in :meth:`Store.transaction`.
    """
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
        self.emitted: list[Envelope] = []
        # The trace context each event was emitted in (crm_platform.tracing; None when off).
        self.trace_contexts: list[Context | None] = []
        # Called once the transaction has committed (never for an attempt that is retried
        # or aborted): e.g. dropping a cached configuration this transaction changed.
        self.after_commit: list[Callable[[], None]] = []

    def emit(self, event: Event, *, correlation_id: str | None = None) -> Envelope:
        cause = causation_var.get()
        corr = correlation_id or (cause.correlation_id if cause else None)
        corr = corr or correlation_id_var.get() or event.partition_key()
        env = envelope_for(
            event,
            source=self.source,
            correlation_id=corr,
            causation_id=str(cause.event_id) if cause else None,
            occurred_at=simulated_now(),  # None (the real time) unless the demo clock set one
        )
        self.emitted.append(env)
        self.trace_contexts.append(tracing.capture())
        return env


class Store:
    def __init__(self, client: AsyncMongoClient[Doc], database: str, source: str) -> None:
        self.client = client
        self.db: AsyncDatabase[Doc] = client[database]
        self.source = source
        self._on_commit: list[Callable[[], None]] = []
        # When a handoff sent now is first checked for its receipt (the runtime
        # sets it from CRM_HANDOFF_RESEND_AFTER_SECONDS).
        self.receipt_grace = timedelta(seconds=120)

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Called after each transaction that emitted events (wakes the outbox relay)."""
        self._on_commit.append(callback)

    async def ensure_platform_indexes(self) -> None:
        await self.db[OUTBOX].create_index([("published", ASCENDING), ("_id", ASCENDING)], name="pending")
        await self.db[OUTBOX].create_index("event_id", unique=True, name="event_id")
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
        journeys: dict[str, tracing.Carrier | None] = {}
        claim = current_claim.get()
        context = audit_context(self.source)

        async def attempt(session: AsyncClientSession) -> T:
            trail = audit.Trail(self.source, session, context)
            tx = Tx(audit.AuditedDatabase(self.db, trail), session, self.source)
            # The request's Idempotency-Key commits with its effect (crm_platform.idempotency).
            await claim_in(self.db, session)
            result = await work(tx)
            await trail.flush(self.db)
            if tx.emitted:
                journeys.update(await self._store_emitted(tx))
            committed[:] = [tx]
            return result

        # In an HTTP request, one deadline for the whole transaction, retries and commit
        # included (crm_platform.deadline): without it with_transaction keeps retrying
        # transient errors for up to 120 s while the database is away. commitTransaction
        # is sent with maxTimeMS = the time left, so the server aborts rather than commits
        # late; only a commit already being applied when the deadline passes can still
        # land, and an Idempotency-Key makes the client's retry of that request safe
        # (crm_platform.idempotency).
        with pymongo.timeout(request_db_deadline.get()):
            async with self.client.start_session() as session:
                result = await session.with_transaction(
                    attempt,
                    read_concern=ReadConcern("snapshot"),
                    write_concern=WriteConcern("majority"),
                )
        if claim is not None:
            claim.committed = True
        for hook in committed[0].after_commit:
            hook()
        if committed[0].emitted:
            await tracing.remember_journeys(self.db, journeys)
            self.wake()
        return result

    async def _store_emitted(self, tx: Tx) -> dict[str, tracing.Carrier]:
        """The attempt's events into the outbox (handoffs also into ``handoffs_sent``), each
        with the trace context it was caused in; returns the first context per journey."""
        rows = [outbox_doc(env) for env in tx.emitted]
        emitted = zip(tx.emitted, rows, tx.trace_contexts, strict=True)
        carriers = await tracing.outbox_contexts(
            self.db, tx.session, [(env, row["topic"], ctx) for env, row, ctx in emitted]
        )
        journeys: dict[str, tracing.Carrier] = {}
        for env, row, carrier in zip(tx.emitted, rows, carriers, strict=True):
            if carrier:
                row[tracing.TRACE_FIELD] = carrier
                journeys.setdefault(env.correlation_id, carrier)
        await self.db[OUTBOX].insert_many(rows, session=tx.session)
        sent = [
            handoff_doc(env, self.receipt_grace)
            for env in tx.emitted
            if env.event_type in HANDOFF_BY_EVENT_TYPE
        ]
        if sent:
            await self.db[HANDOFFS_SENT].insert_many(sent, session=tx.session)
        return journeys

    def wake(self) -> None:
        """Tell the outbox relay that events wait (after a commit or a re-send)."""
        for callback in self._on_commit:
            callback()


def audit_context(service: str) -> audit.Context:
    """Who a transaction's changes are by: the request's user, else the event being handled,
    else the service itself (a schedule); with the request and correlation ids at hand."""
    cause = causation_var.get()
    user = audit.actor_var.get()
    if user is not None:
        actor = audit.user_actor(user)
    elif cause is not None:
        actor = audit.event_actor(cause.source, cause.event_type, str(cause.event_id))
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
    return {
        "event_id": str(env.event_id),
        "event_type": env.event_type,
        "topic": model_for(env.event_type, env.schema_version).topic,
        "key": env.partition_key,
        "envelope": env.model_dump(mode="json"),
        "published": False,
        "created_at": env.occurred_at,
    }


def handoff_doc(env: Envelope, grace: timedelta) -> Doc:
    """The sender's record of one handoff, pending until its receipt arrives."""
    return {
        "_id": str(env.event_id),
        "handoff": HANDOFF_BY_EVENT_TYPE[env.event_type].name,
        "event_type": env.event_type,
        "key": env.partition_key,
        "state": "pending",
        "created_at": env.occurred_at,
        "resends": 0,
        "next_check_at": env.occurred_at + grace,
    }
