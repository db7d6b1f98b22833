"""The outbox relay: publishes events stored by transactions, in order, at least once.

Handlers never talk to Kafka. They store events in the ``outbox`` collection in
the same transaction as their state change; this relay publishes pending events
in ``_id`` order (ObjectIds increase within a process, so one aggregate's events
keep their order) with an idempotent producer and marks them published. If the
broker is down, writes keep succeeding and the backlog drains when it returns.
Consumers deduplicate by event id, so a crash between publish and mark costs a
duplicate delivery, never a lost event. The marks are written beside the relay's loop
(:meth:`OutboxRelay._mark`): the next publish does not wait for them, and leaves the rows
being marked out of its read; a mark that fails hands its rows back to be published again.
Each row keeps the partition and offset the broker acknowledged;
:mod:`crm_platform.outbox_audit` republishes the rows whose record the broker lost afterwards.

With several replicas of a service, a lease in the database makes one relay the
publisher at a time, so two relays never interleave one key's events.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import pydantic_core
from aiokafka import AIOKafkaProducer
from crm_contracts import utcnow
from pymongo import UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError
from pymongo.write_concern import WriteConcern

from crm_platform import metrics, tracing
from crm_platform.idempotency import only_duplicates_applied
from crm_platform.kafka import (
    CLIENT_START_SECONDS,
    make_producer,
    murmur2_many,
    partition_for,
    start_client,
    stop_client,
)
from crm_platform.mongo import (
    BATCH_EVENTS,
    HANDOFFS_SENT,
    OUTBOX,
    PENDING_BATCHES,
    RECEIPT_GRACE,
    WRITER,
    CommittedRows,
    handoff_records,
    handoff_upserts,
    row_items,
)
from crm_platform.outbox_audit import AUDITED, LOG_CHECKS, LOG_OFFSET, LOG_PARTITION, LOG_POSITIONS

log = logging.getLogger("crm.outbox")
LEASE = "outbox_lease"
LEASE_SECONDS = 10.0
# How many writes of "published" marks may be in flight at once (OutboxRelay._mark): the
# relay publishes the next rows while they are written, and waits when this many are.
MARKS_IN_FLIGHT = 2
# How long a mark waits before it is written, taking the marks of the publishes meanwhile with
# it: at 25 handoffs/s a publish every 40 ms was a bulk_write each (a round trip in the service
# and a command for mongod; in a sending service two, its handoffs_sent records first); now one
# per this while (0.1 s until the twenty-fifth session: ten a second at 25/s, now two). Its rows
# are published already (left out of the reads until marked); a stop writes it at once, and so
# does a trickle's publish it has no room for (``gather_below_events``); a crash before it
# publishes them again (at least once, as a crash after a publish always did). A handoff's
# receipt now mostly comes before its record: the record is an upsert that fills in what the
# receipt's lacks (crm_platform.mongo.handoff_upserts).
MARKS_GATHER_SECONDS = 0.5
# How long the outbox change stream's getMore waits on the server for a change (it answers at
# once when one comes): one round trip per this many idle seconds, not per second; a stop
# cancels the wait (docs/performance.md, fourteenth session, idle).
WATCH_AWAIT_SECONDS = 5.0
# At most this share of the client's operation timeout (``timeoutMS``: CRM_DB_DEADLINE_SECONDS,
# 5 s in the services), which PyMongo applies to each of the stream's getMores: one that waits
# as long as the timeout ends past it, and the stream failed ("outbox change stream unavailable")
# whenever 5 s passed without a matching change, closed until ``retry_seconds`` later
# (docs/performance.md, seventeenth session, mongod25).
WATCH_AWAIT_SHARE = 0.8
# A relay whose store names its rows (``committed``: ``WRITER``) opens its change stream only once
# a read of the pending rows found a row another process wrote (another replica's insert, a row
# handed back from elsewhere), and closes it when no read has found one for this long. Every
# open stream's awaiting getMore is woken by every oplog write and scans it: four streams cost
# mongod 1.6-3.8 ms per handoff at 25/s with no other writer to report (docs/performance.md,
# seventeenth session, mongod25, and eighteenth session, p99leads). With one replica no stream is
# open; with two, the first row of the other replica waits for the poll, the next ones wake it.
WATCH_KEPT_SECONDS = 600.0
APPLIED = WriteConcern(w=1)  # acknowledged once applied on the primary (no journal wait)
# A relay whose store hands it its committed rows (``committed``: CommittedRows.hand) publishes
# them without reading the pending rows first, while nothing else can be pending; it still reads
# them at least this often while it publishes (and after every idle poll): the safety sweep
# that finds what no wake-up announced (another replica's first row while its change stream is
# closed, a row a tool handed back). The read after every commit was one mongod round trip on
# each handoff's way (docs/performance.md, twenty-sixth session, relayhop).
SWEEP_SECONDS = 1.0


def watch_await_ms(db: Any) -> int:
    """How long the relay's change stream getMore waits on the server: ``WATCH_AWAIT_SECONDS``,
    but within the client's operation timeout, if it has one."""
    wait = WATCH_AWAIT_SECONDS
    timeout = getattr(getattr(getattr(db, "client", None), "options", None), "timeout", None)
    if isinstance(timeout, int | float) and timeout > 0:
        wait = min(wait, timeout * WATCH_AWAIT_SHARE)
    return max(1, int(wait * 1000))


def rfc3339(moment: datetime) -> str:
    """An aware UTC instant as the envelope writes it (``2026-12-05T09:00:00.123456Z``)."""
    return moment.isoformat().replace("+00:00", "Z")


def wire_record(envelope: Mapping[str, Any], produced_at: str) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The Kafka value and headers of a stored envelope, stamped with ``produced_at``.

    The outbox row holds the envelope as JSON-ready values (``Envelope.model_dump(mode="json")``,
    validated when the event was emitted), so it is written out as it is, as
    ``Envelope.to_bytes`` and ``Envelope.headers`` would, without being validated and
    rebuilt first: that cost the relay four times as much CPU per event (docs/performance.md).
    """
    stamped = {**envelope, "produced_at": produced_at}
    # pydantic-core's encoder, the one Envelope.to_bytes uses (its floats too: 1e-05 is 1e-5
    # there): compact UTF-8, a quarter of json.dumps' CPU (7.6 -> 1.9 us per lead.captured).
    value = pydantic_core.to_json(stamped)
    headers = [
        ("event_type", str(stamped["event_type"]).encode()),
        ("schema_version", str(stamped["schema_version"]).encode()),
        ("event_id", str(stamped["event_id"]).encode()),
        ("correlation_id", str(stamped["correlation_id"]).encode()),
    ]
    return value, headers


def counted(service: str, rows: list[dict[str, Any]]) -> None:
    """The published rows' events into ``crm_events_produced_total``: one labelled child
    looked up per (topic, type), not per event (a batch row holds a thousand events)."""
    produced = Counter((item["topic"], item["event_type"]) for row in rows for item in row_items(row))
    for (topic, event_type), n in produced.items():
        metrics.EVENTS_PRODUCED.labels(service, topic, event_type).inc(n)


def _positions(doc: Mapping[str, Any], metas: list[Stored], placed: list[Placed]) -> dict[str, Any]:
    """Where the broker says it stored the row's events: the audit checks they are still
    there once the publish is old enough (crm_platform.outbox_audit). A batch row also
    names, per producer batch its events went in, the last of them (``log_checks``): the
    audit reads those, not every event (see :data:`crm_platform.outbox_audit.LOG_CHECKS`)."""
    if BATCH_EVENTS not in doc:
        return {LOG_PARTITION: metas[0].partition, LOG_OFFSET: metas[0].offset, AUDITED: False}
    last: dict[int, int] = {}  # producer batch (its acknowledgement's slot) -> the row's last record in it
    for index, record in enumerate(placed):
        last[id(record.slot)] = index
    items = doc[BATCH_EVENTS]
    checks = [
        [items[i]["topic"], metas[i].partition, metas[i].offset, items[i]["event_id"]]
        for i in sorted(last.values())
    ]
    return {LOG_POSITIONS: [[m.partition, m.offset] for m in metas], LOG_CHECKS: checks, AUDITED: False}


# The backlog's two reads in one round trip (``$unionWith``): the pending rows counted on
# ``pending`` (a COUNT_SCAN), then each pending batch row's ``count`` from ``pending_batches``
# (covered: no row is fetched; a batch row holds up to a thousand envelopes).
BACKLOG_PIPELINE: list[dict[str, Any]] = [
    {"$match": {"published": False}},
    {"$group": {"_id": None, "rows": {"$sum": 1}}},
    {
        "$unionWith": {
            "coll": OUTBOX,
            "pipeline": [{"$match": PENDING_BATCHES}, {"$project": {"count": 1, "_id": 0}}],
        }
    },
]


async def pending_events(db: AsyncDatabase[dict[str, Any]]) -> int:
    """How many events wait in the outbox (a batch row counts its events).

    On indexes only, however long the backlog, and in one round trip (``BACKLOG_PIPELINE``):
    the relay samples it every ``CRM_OUTBOX_BACKLOG_SAMPLE_SECONDS`` in every service, busy or
    idle (a count and a find before, two requests each time).
    """
    total = 0
    async for doc in await db[OUTBOX].aggregate(BACKLOG_PIPELINE):
        total += int(doc["rows"]) if "rows" in doc else int(doc["count"]) - 1
    return total


# The bytes of one producer batch the relay fills (a 500-event bulk row: about 70 KiB per
# partition of six): under the broker's and aiokafka's 1 MiB request limits.
RELAY_BATCH_BYTES = 256 * 1024


class Placed(NamedTuple):
    """A record handed to a producer batch: the batch's acknowledgement (``slot``, filled
    when the batch is sent) and the record's place in it (``at``)."""

    slot: list[asyncio.Future[Any]]
    at: int


class Stored(NamedTuple):
    """Where the broker stored a record (what ``_positions`` keeps)."""

    partition: int
    offset: int


async def acknowledged(record: Placed) -> Stored:
    """The record's position once its batch is acknowledged (the batch's offset + its index)."""
    meta = await record.slot[0]
    return Stored(meta.partition, meta.offset + record.at)


def hashes(keys: list[bytes]) -> list[int | None]:
    """The murmur2 of a row's record keys, a batch row's hashed together (``murmur2_many``:
    about 0.3 us a key against 2.9 one at a time, for every event of a bulk capture or an
    import batch); a row of one is left to :func:`crm_platform.kafka.partition_for`."""
    if len(keys) < 2:
        return [None] * len(keys)
    return list(murmur2_many(keys))


class Batches:
    """The records of one publish in producer batches, one per partition at a time, in order.

    aiokafka's ``send`` per record (metadata wait, partitioner, a future and a coroutine
    each) cost the relay about 17 us of CPU per event; appended to a batch a record costs
    about 1 (docs/performance.md, ninth session, bulk). A partition's batch is sent when full
    (the next one waits for it to be taken: ``send_batch``) and every open one at the end, so
    a partition's records reach the broker in the order they were added; each record's
    partition is the producer's own (:func:`crm_platform.kafka.partition_for`).
    """

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer
        self._partitions: dict[str, list[int]] = {}
        self._open: dict[tuple[str, int], tuple[Any, list[asyncio.Future[Any]], int]] = {}

    async def add(
        self,
        topic: str,
        key: bytes,
        value: bytes,
        headers: list[tuple[str, bytes]],
        hashed: int | None = None,
    ) -> Placed:
        """``hashed``: the key's murmur2 when the caller hashed the keys together (:func:`hashes`)."""
        partitions = self._partitions.get(topic)
        if partitions is None:
            # As aiokafka's partitioner is called (waiting for the topic's metadata first).
            partitions = self._partitions[topic] = list(await self.producer.partitions_for(topic))
        if hashed is None:
            tp = (topic, partition_for(key, partitions, partitions))
        else:  # partition_for's answer for this key, from its hash
            tp = (topic, partitions[(hashed & 0x7FFFFFFF) % len(partitions)])
        if tp in self._open:
            builder, slot, count = self._open[tp]
            if builder.append(timestamp=None, key=key, value=value, headers=headers) is not None:
                self._open[tp] = (builder, slot, count + 1)
                return Placed(slot, count)
            await self._send(tp)  # full: sent, and a new batch for this partition
        builder, slot = self.producer.create_batch(), []
        builder.append(timestamp=None, key=key, value=value, headers=headers)  # a first record always fits
        self._open[tp] = (builder, slot, 1)
        return Placed(slot, 0)

    async def send(self) -> None:
        """Send every batch still open."""
        for tp in list(self._open):
            await self._send(tp)

    async def _send(self, tp: tuple[str, int]) -> None:
        builder, slot, _ = self._open.pop(tp)
        # Closed: complete, so the producer sends it at once instead of letting it linger
        # (``linger_ms``: 2 ms on every publish, on the handoff's path; docs/performance.md,
        # tenth session, latency). Nothing is appended to a batch once it is handed over.
        builder.close()
        slot.append(await self.producer.send_batch(builder, tp[0], partition=tp[1]))


async def _filled(sent: AsyncCollection[dict[str, Any]], records: list[dict[str, Any]]) -> None:
    """``handoffs_sent`` records written as upserts that fill in what a record there lacks
    (crm_platform.mongo.handoff_upserts); a duplicate key (two upserts of one id at once) is
    left to the one that won."""
    try:
        await sent.bulk_write(handoff_upserts(records), ordered=False)
    except BulkWriteError as exc:
        if not only_duplicates_applied(exc):
            raise


class OutboxRelay:
    # When a handoff published here is first checked for its receipt (its ``handoffs_sent``
    # record, written with its mark: :meth:`_track_handoffs`); the runtime sets it from
    # CRM_HANDOFF_RESEND_AFTER_SECONDS.
    receipt_grace: timedelta = RECEIPT_GRACE
    start_seconds: float = CLIENT_START_SECONDS  # its producer's start (CRM_KAFKA_START_SECONDS)

    def __init__(
        self,
        db: AsyncDatabase[dict[str, Any]],
        *,
        bootstrap: str,
        service: str,
        poll_seconds: float = 0.5,
        batch_size: int = 500,
        committed: CommittedRows | None = None,
        compression: str | None = "zstd",
        marks_in_flight: int = MARKS_IN_FLIGHT,
        marks_gather_seconds: float = MARKS_GATHER_SECONDS,
        watch_kept_seconds: float = WATCH_KEPT_SECONDS,
        sweep_seconds: float = SWEEP_SECONDS,
    ) -> None:
        self.db = db
        # The producer batches' codec: zstd, not lz4 (aiokafka compresses lz4 at level 9: 4x the
        # CPU, a third larger; docs/performance.md, "Tenth session, import").
        self.compression = compression
        # The rows this process's Store committed lately: published without a read (back).
        self.committed, self.bootstrap, self.service = committed, bootstrap, service
        self.poll_seconds, self.batch_size = poll_seconds, batch_size
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{id(self)}"
        self._wake = asyncio.Event()
        self._renew_at = 0.0  # monotonic time when the lease is due for renewal
        self._renewing: asyncio.Task[None] | None = None  # a renewal beside the publishes
        self._lease_epoch = 0  # check_lease_now's count: a renewal that began before is not trusted
        self.monotonic: Callable[[], float] = time.monotonic  # tests step their own clock
        self._stopping = asyncio.Event()
        self.producer: AIOKafkaProducer | None = None
        self.connected = False  # the producer's last publish or start succeeded
        self._drained = False  # the last read of the pending rows took all it found (< a batch)
        self._watching: asyncio.Task[Any] | None = None  # watch_inserts' task, ended by stop()
        # The writes of "published" marks in flight (_mark), the rows each marks, and those
        # rows' ids: published already, left out of the next reads until marked or handed back.
        self.marks_in_flight = max(1, marks_in_flight)
        self._marking: dict[asyncio.Task[None], list[Any]] = {}
        self._being_marked: set[Any] = set()
        self._mark_error: Exception | None = None  # a failed mark's, raised in the loop (its backoff)
        # The mark still waiting to be written (its marks, rows and ids: later publishes join it).
        self.marks_gather_seconds = marks_gather_seconds
        self.gather_below_events = max(1, batch_size // 10)  # a publish of fewer is a trickle's
        self._gathered_events, self._gather_ends = 0, asyncio.Event()  # set: written now (full, a stop)
        self._gathering: tuple[list[UpdateOne], list[dict[str, Any]], list[Any]] | None = None
        # When a read last found another writer's pending row (monotonic; it opens the stream).
        self._others_at, self._others = -math.inf, asyncio.Event()
        self.watch_kept_seconds, self.streaming = watch_kept_seconds, False  # streaming: it is open
        # The handed rows are published without a read until then (monotonic; SWEEP_SECONDS).
        self.sweep_seconds, self._sweep_at = min(sweep_seconds, poll_seconds), -math.inf

    def notify(self) -> None:
        """Wake the relay to read the pending rows: a row handed back (a re-send, the outbox
        audit), rows that no commit of this process handed it."""
        if self.committed is not None:
            self.committed.want_read()
        self._wake.set()

    def rows_handed(self) -> None:
        """Wake the relay for the rows a commit of this process handed it (``committed``:
        crm_platform.mongo.CommittedRows.hand): published without a read when nothing else can
        be pending (:meth:`_handed_only`). The service's store calls it after each commit."""
        self._wake.set()

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._others.set()
        self._gather_ends.set()
        watching = self._watching
        if watching is not None and not watching.done():
            watching.cancel()  # its getMore waits on the server up to WATCH_AWAIT_SECONDS

    async def run(self) -> None:
        try:
            await self._publish_until_stopped()
            await self._marks_written()  # a stop lets the marks in flight end
        except asyncio.CancelledError:
            # Abandoned: their rows stay pending in mongod, published again by whoever publishes.
            if self._renewing is not None:
                self._renewing.cancel()
            for task in list(self._marking):
                task.cancel()
            self._marking.clear()
            self._being_marked.clear()
            self._gathering = None
            raise
        await self._close_producer()
        await self._release_lease()

    async def _publish_until_stopped(self) -> None:
        backoff = 0.5
        while not self._stopping.is_set():
            try:
                if self.producer is None:
                    self.producer = await self._start_producer()
                    backoff = 0.5
                if not await self._lease_held():
                    if self.committed is not None:
                        self.committed.clear()  # another replica publishes them (a read wanted)
                    await self._idle(LEASE_SECONDS / 3)
                    continue
                published = await self.publish_pending()
                if published == 0 or self._drained:
                    # Nothing left that the last read saw: wait for a wake-up (a commit, the
                    # change stream) or the poll instead of reading the pending rows again at
                    # once only to find none; a wake-up during the publish ends the wait at
                    # once. The backlog gauge is sampled by track_backlog on its own timer.
                    await self._idle(self.poll_seconds)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.connected = False
                if self.committed is not None:
                    self.committed.want_read()  # rows taken and not sent are pending in mongod
                log.warning(
                    "outbox relay cannot publish (%s); retrying in %.1f s",
                    exc,
                    backoff,
                    extra={"error": type(exc).__name__},
                )
                await self._close_producer()
                await self._idle(backoff)
                backoff = min(backoff * 2, 5.0)

    async def publish_pending(self) -> int:
        """Publish one batch of pending events; returns how many were published.

        A batch row (``crm_platform.mongo.outbox_rows``) is published whole, its events in
        order, and marked once, with every event's position (``log_positions``). The marks are
        written in a task (:meth:`_mark`); a mark written earlier that failed is raised here
        (its rows are pending again), before anything else is read.
        """
        assert self.producer is not None
        if self._mark_error is not None:
            failed, self._mark_error = self._mark_error, None
            raise failed
        docs = await self._pending_rows()
        if not docs:
            return 0
        futures = await self._send(docs)
        # Mark only the prefix of rows that the broker acknowledged whole, so a failure
        # midway republishes the rest (and consumers drop any duplicate by event id).
        done: list[Any] = []
        marks: list[UpdateOne] = []
        error: BaseException | None = None
        published_at = utcnow()
        for doc, row_futures in zip(docs, futures, strict=True):
            try:
                metas = [await acknowledged(record) for record in row_futures]
            except Exception as exc:
                error = exc
                break
            done.append(doc)
            stored = _positions(doc, metas, row_futures)
            marks.append(
                UpdateOne(
                    {"_id": doc["_id"]}, {"$set": {"published": True, "published_at": published_at, **stored}}
                )
            )
        if marks:
            await self._mark(marks, done)
        self.connected = True
        if error is not None:
            raise error
        return sum(len(row_items(d)) for d in done)

    async def _mark(self, marks: list[UpdateOne], done: list[dict[str, Any]]) -> None:
        """Write the published rows' marks in a task, not on the relay's loop: a write (then a
        majority write, a journal wait of 4-5 ms; w=1 since: :meth:`_write_marks`) that a row
        committed meanwhile waited for before its own read (docs/performance.md, sixteenth
        session, relay marks). Its rows are left out of the reads
        until it ends: published once in the normal path; rows after them, of their keys too,
        may be published, since these were. At most ``marks_in_flight`` at once: at the bound
        this waits for one to end. A trickle's mark (fewer than ``gather_below_events`` events)
        waits ``marks_gather_seconds`` before it is written: the marks of the trickle's publishes
        meanwhile join it, one write for them all. One it has no room for ends its wait (it is
        written now) and gathers anew: no second mark waits out the gather beside it, nor the
        relay's loop for one at the bound."""
        ids = [doc["_id"] for doc in done]
        # A trickle's publish (a few events: a lone handoff's rows) waits; a backlog's is
        # written at once (its end is when a bulk capture's events are all published).
        events = sum(len(row_items(doc)) for doc in done)
        trickle = self.marks_gather_seconds > 0 and events < self.gather_below_events
        gathering = self._gathering
        if trickle and gathering is not None:
            if self._gathered_events + events < self.gather_below_events:
                gathering[0].extend(marks)
                gathering[1].extend(done)
                gathering[2].extend(ids)  # the same list as the task's in _marking
                self._gathered_events += events
                self._being_marked.update(ids)
                return
            self._gathering = None
            self._gather_ends.set()  # full: written now
        while len(self._marking) >= self.marks_in_flight:
            await asyncio.wait(list(self._marking), return_when=asyncio.FIRST_COMPLETED)
        self._being_marked.update(ids)
        batch = (list(marks), list(done), ids)
        ends = None
        if trickle:
            self._gathering, self._gathered_events = batch, events
            ends = self._gather_ends = asyncio.Event()
            if self._stopping.is_set():
                ends.set()
        task = asyncio.create_task(self._gather_and_write(batch, ends), name="outbox-marks")
        self._marking[task] = ids

    async def _gather_and_write(
        self, batch: tuple[list[UpdateOne], list[dict[str, Any]], list[Any]], ends: asyncio.Event | None
    ) -> None:
        """A mark's wait for the next publishes' marks (``ends``: set by a stop, or by a publish
        it has no room for; None: no wait), then its write."""
        if ends is not None:
            try:
                await asyncio.wait_for(ends.wait(), timeout=self.marks_gather_seconds)
            except TimeoutError:
                pass
            finally:
                if self._gathering is batch:
                    self._gathering = None
        await self._write_marks(*batch)

    async def _write_marks(self, marks: list[UpdateOne], done: list[dict[str, Any]], ids: list[Any]) -> None:
        """One :meth:`_mark` write. Failed (or cancelled by a stop that abandons it), its rows,
        or those not marked, are pending in mongod: handed back to the relay's reads, published
        again (at least once; consumers drop the repeat by event id), the relay woken for them.

        Acknowledged once applied (``APPLIED``), without a journal wait of its own: a mark lost
        in a crash before mongod's next journal flush (within its commit interval, 100 ms, or
        sooner with any durable write) leaves its rows pending, published and recorded again,
        as a crash within ``marks_gather_seconds`` (the mark not written yet) always did. Its
        majority wait was a journal sync of its own for most lone handoffs at 25/s, about
        0.35 ms of mongod's CPU each (docs/performance.md, twentieth session, p99leads)."""
        try:
            await self._track_handoffs(done)
            await self.db[OUTBOX].with_options(write_concern=APPLIED).bulk_write(marks, ordered=False)
        except Exception as exc:
            log.warning("outbox marks failed (%s); their %d rows are published again", exc, len(ids))
            if self._mark_error is None:
                self._mark_error = exc
            self.notify()  # its rows are pending again: read
        else:
            counted(self.service, done)
        finally:
            self._being_marked.difference_update(ids)
            task = asyncio.current_task()
            if task is not None:
                self._marking.pop(task, None)

    async def _track_handoffs(self, done: list[dict[str, Any]]) -> None:
        """The ``handoffs_sent`` records of the handoffs in ``done`` (published), before their
        rows are marked (crm_platform.mongo.handoff_records): one write with the gathered mark,
        off the handoff's way, instead of one in each sending transaction. A record there
        already (a re-send published again, a mark that failed after its records) is left as it
        is, and one a receipt made first (crm_platform.receipts) keeps its receipt and gets the
        fields it lacks (crm_platform.mongo.handoff_upserts).

        A trickle's few records (fewer than ``gather_below_events``, where the receipts mostly
        came first) are upserts, one request; a backlog's are inserted, then those whose id was
        taken are filled in: an ``insert_many`` of hundreds is a few storage transactions, their
        upserts one each (ten times mongod's time per record)."""
        records = handoff_records(done, self.receipt_grace)
        if not records:
            return
        # Acknowledged once applied, without a journal wait of its own, as the mark written
        # next (the journal and the oplog are in order: durable no later than the mark); lost
        # in a crash before the journal's flush, its rows are pending (their mark lost too)
        # and published and recorded again.
        sent = self.db[HANDOFFS_SENT].with_options(write_concern=APPLIED)
        if len(records) < self.gather_below_events:
            await _filled(sent, records)
            return
        try:
            await sent.insert_many(records, ordered=False)
        except BulkWriteError as exc:
            if not only_duplicates_applied(exc):
                raise
            taken = {records[error["index"]]["_id"] for error in exc.details["writeErrors"]}
            await _filled(sent, [record for record in records if record["_id"] in taken])

    async def _marks_written(self) -> None:
        """Wait for every mark in flight to end (written or failed)."""
        while self._marking:
            await asyncio.wait(list(self._marking))

    async def _pending_rows(self) -> list[dict[str, Any]]:
        """The oldest pending rows holding about ``batch_size`` events (at least one row): the
        rows this process's commits handed the relay, without a read, when nothing else can be
        pending (:meth:`_handed_only`), else those a read of the outbox finds."""
        committed = self.committed
        if committed is not None and self._handed_only(committed):
            sweep = self.monotonic() >= self._sweep_at
            rows = committed.take_handed(self.batch_size)
            if rows or not sweep:
                if sweep:  # the sweep's read once these are sent: not on their way
                    committed.want_read()
                self._drained = not committed.handed and not sweep
                return rows
        if committed is None:
            return await self._read_pending()
        covered = committed.reading()
        self._sweep_at = self.monotonic() + self.sweep_seconds
        heads: list[dict[str, Any]] = []
        rows = await self._read_pending(heads)
        committed.read(heads, covered, drained=self._drained)
        return rows

    def _handed_only(self, committed: CommittedRows) -> bool:
        """Whether the handed rows are all that can be pending: no read wanted (a row handed
        back, an erasure's change, a dropped hand-off, a start or a failure: ``committed``'s
        ``read_wanted``; a read that did not take every pending row wants the next), and no other
        writer's row was found lately (its change stream open: that writer's rows may be older
        than the handed ones). Order per key: the handed rows go in commit order, after every
        row the last read found. The sweep (``sweep_seconds`` after the last read) reads once
        the rows handed by then are sent (:meth:`_pending_rows`)."""
        if committed.read_wanted:
            return False
        return self.monotonic() - self._others_at >= self.watch_kept_seconds

    async def _read_pending(self, heads_found: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """The oldest pending rows holding about ``batch_size`` events, read (at least one row);
        ``heads_found`` gets every row the read found (without a batch row's events).

        Read without the batch rows' events first (a single row is read whole): a batch row
        holds up to a thousand events, and ``batch_size`` of those would be far more than one
        publish. Only the batch rows taken are then read with their events, but for those this
        process committed lately: they are published as written (``committed``).
        """
        # Not the rows whose marks are being written (published already: _mark).
        query: dict[str, Any] = {"published": False}
        if self._being_marked:
            query["_id"] = {"$nin": list(self._being_marked)}
        pending = self.db[OUTBOX].find(query, {BATCH_EVENTS: 0}).sort("_id", 1)
        heads = await pending.limit(self.batch_size).to_list()
        if heads_found is not None:
            heads_found.extend(heads)
        self._note_writers(heads)
        taken: list[dict[str, Any]] = []
        events = 0
        for head in heads:
            if taken and events + head.get("count", 1) > self.batch_size:
                break
            taken.append(head)
            events += head.get("count", 1)
        self._drained = len(heads) < self.batch_size and len(taken) == len(heads)
        full = self._committed_here(taken)
        batches = [row["_id"] for row in taken if "count" in row and row["_id"] not in full]
        if batches:
            full.update(
                {
                    row["_id"]: row
                    async for row in self.db[OUTBOX].find({"_id": {"$in": batches}, "published": False})
                }
            )
        taken = [full.get(row["_id"], row) if "count" in row else row for row in taken]
        return [row for row in taken if "count" not in row or BATCH_EVENTS in row]

    def _note_writers(self, heads: list[dict[str, Any]]) -> None:
        """A pending row that another process wrote (not this store's ``WRITER``) opens the change
        stream, or keeps it open (:meth:`watch_inserts`): that process may write more."""
        if self.committed is None:
            return
        mine = self.committed.writer
        if any(head.get(WRITER) != mine for head in heads):
            self._others_at = self.monotonic()
            self._others.set()

    def _others_lately(self) -> bool:
        """Whether the change stream is wanted: always without ``committed`` (no writer to tell
        this process's rows by), else while a read found another writer's row lately."""
        if self.committed is None:
            return True
        if self.monotonic() - self._others_at < self.watch_kept_seconds:
            return True
        self._others.clear()
        return False

    def _committed_here(self, heads: list[dict[str, Any]]) -> dict[Any, dict[str, Any]]:
        """The batch rows among ``heads`` that this process committed lately, as it wrote
        them (crm_platform.mongo.CommittedRows): not read back from mongod."""
        if self.committed is None or not len(self.committed):
            return {}
        rows = ((head["_id"], self.committed.take(head)) for head in heads if "count" in head)
        return {row_id: row for row_id, row in rows if row is not None}

    async def _send(self, docs: list[dict[str, Any]]) -> list[list[Any]]:
        """Hand the rows' records to the producer (:class:`Batches`: one producer batch per
        partition, in order); per row, where each record's acknowledgement will come from."""
        assert self.producer is not None
        batches = Batches(self.producer)
        produced_at = rfc3339(utcnow())
        placed = []
        for doc in docs:
            row_placed = []
            items = row_items(doc)
            keys = [item["key"].encode() for item in items]
            for item, key, hashed in zip(items, keys, hashes(keys), strict=True):
                value, headers = wire_record(item["envelope"], produced_at)
                # The trace context stored with the event when it was caused.
                headers += tracing.kafka_headers(item.get(tracing.TRACE_FIELD))
                row_placed.append(await batches.add(item["topic"], key, value, headers, hashed))
            placed.append(row_placed)
        await batches.send()
        return placed

    def new_producer(self) -> AIOKafkaProducer:
        """The relay's producer, not started: its batches of ``RELAY_BATCH_BYTES`` in its codec."""
        return make_producer(
            self.bootstrap,
            f"{self.service}-outbox",
            max_batch_size=RELAY_BATCH_BYTES,
            compression=self.compression,
        )

    async def _start_producer(self) -> AIOKafkaProducer:
        producer = self.new_producer()
        try:
            await start_client(producer, self.start_seconds)
        except Exception:
            await stop_client(producer)
            raise
        self.connected = True
        log.info("outbox relay connected to %s", self.bootstrap)
        return producer

    async def _close_producer(self) -> None:
        if self.producer is not None:
            producer, self.producer = self.producer, None
            try:
                await producer.stop()
            except Exception as exc:  # closing a broken connection may fail too
                log.debug("producer stop failed: %s", exc)

    async def _idle(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        except TimeoutError:
            pass
        self._wake.clear()

    async def _refresh_backlog(self) -> None:
        metrics.OUTBOX_BACKLOG.labels(self.service).set(await pending_events(self.db))

    async def watch_inserts(self, retry_seconds: float = 30.0) -> None:
        """Wake the relay when ANY replica (or process) stores events or hands a row back to
        publish: a change stream on the outbox.

        The committing transaction wakes its own process's relay (``Store.on_commit``);
        events stored by another replica used to wait for the poll. With this stream
        they wake every replica's relay at once (the one holding the lease publishes),
        so the poll (``CRM_OUTBOX_POLL_SECONDS``) is only a fallback and can be long.
        Each getMore waits within the client's operation timeout (:func:`watch_await_ms`).
        Only the event's id is sent (``$project``), not the stored document. A database
        that cannot open a change stream (not a replica set) or drops it leaves the poll
        alone; the stream is opened again after ``retry_seconds``.

        A relay that tells this process's rows by their ``WRITER`` (``committed``) opens the
        stream only once a read of the pending rows found another writer's row, and closes it
        ``watch_kept_seconds`` after the last such read (:meth:`_others_lately`): each open
        stream costs mongod a scan of every oplog entry, and a lone replica's stream reported
        nothing (its own inserts are left out). The rows of another replica, and those handed
        back from elsewhere, meanwhile wait for the poll (``poll_seconds``) until one is read.
        """
        pipeline = self._watch_pipeline()
        self._watching = asyncio.current_task()
        wait_ms = watch_await_ms(self.db)
        while not self._stopping.is_set():
            try:
                if not self._others_lately():
                    await self._others.wait()  # a read found another writer's row (or a stop)
                    continue
                await self._stream(pipeline, wait_ms)
                continue
            except asyncio.CancelledError:
                if self._ended_by_stop():
                    return
                raise
            except Exception as exc:
                log.info("outbox change stream unavailable (%s); relying on the poll for now", exc)
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=retry_seconds)
            except TimeoutError:
                pass

    def _watch_pipeline(self) -> list[dict[str, Any]]:
        """The change stream's filter: inserts and rows handed back, their ids only."""
        # Not this process's own inserts (``WRITER``): their commit wakes the relay itself
        # (``Store.wake``), and each was a getMore answered for nothing, one a handoff.
        insert: dict[str, Any] = {"operationType": "insert"}
        if self.committed is not None:
            insert[f"fullDocument.{WRITER}"] = {"$ne": self.committed.writer}
        to_publish = {
            "$or": [
                insert,
                # a row handed back to the relay (a receipt's re-send, the outbox audit, crm-ops)
                {"operationType": "update", "updateDescription.updatedFields.published": False},
            ]
        }
        project = {"_id": 1, "operationType": 1, "documentKey": 1}
        return [{"$match": to_publish}, {"$project": project}]

    async def _stream(self, pipeline: list[dict[str, Any]], wait_ms: int) -> None:
        """The change stream open, waking the relay for each change reported, until a stop or
        until no read has found another writer's row for ``watch_kept_seconds``."""
        try:
            async with await self.db[OUTBOX].watch(pipeline, max_await_time_ms=wait_ms) as stream:
                self.streaming = True
                while not self._stopping.is_set() and self._others_lately():
                    change = await stream.try_next()
                    if change is not None and not self._woken_here(change):
                        self.notify()  # a row no commit here handed: read
        finally:
            self.streaming = False

    def _ended_by_stop(self) -> bool:
        """Whether the watch's cancellation is :meth:`stop`'s alone (then the watch just ends)."""
        task = asyncio.current_task()
        return self._stopping.is_set() and task is not None and task.uncancel() == 0

    def _woken_here(self, change: Mapping[str, Any]) -> bool:
        """Whether a change the stream reports is a row this process's transaction inserted:
        that transaction wakes the relay itself once committed (crm_platform.mongo.Store),
        so waking it again would only read the pending rows once more and find them
        published. A row handed back (an update) always wakes it."""
        if self.committed is None or change.get("operationType") != "insert":
            return False
        return self.committed.woken_here(change.get("documentKey", {}).get("_id"))

    async def track_backlog(self, interval_seconds: float) -> None:
        """Sample ``crm_outbox_backlog`` on a timer, whatever the relay is doing.

        Runs beside :meth:`run`, never inside it: while the broker is down the relay
        sits in its retry loop, and a gauge refreshed only by the relay would freeze
        at its last (typically 0) value exactly when the backlog grows. Every
        replica samples (the backlog is the database's, so replicas agree; alerts
        take ``max``). A database that does not answer leaves the last value.
        """
        while not self._stopping.is_set():
            try:
                await self._refresh_backlog()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("cannot sample the outbox backlog: %s", exc)
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=interval_seconds)
            except TimeoutError:
                pass

    def check_lease_now(self) -> None:
        """Make the next loop verify the lease in the database instead of trusting the timer.

        Another replica can only take the lease once it expired (``LEASE_SECONDS``
        without a renewal, three renewals missed), so between renewals the timer is
        enough; a test that hands the lease to a stand-in replica calls this.
        """
        self._renew_at = 0.0
        self._lease_epoch += 1  # a renewal aside in flight no longer counts
        self._wake.set()

    async def _lease_held(self) -> bool:
        """Whether this relay may publish: the lease is renewed on a timer, not on every loop (a
        round trip per publish otherwise). It is trusted for a third of its term after a renewal
        began (``_renew_at``); once half of that has passed, a loop renews it in a task of its own
        (:meth:`_renew_aside`) and publishes meanwhile, so no publish waits for the lease's write
        (a majority write: one handoff in about 80 at 25/s waited for it, docs/performance.md,
        twenty-seventh session, p99tail). Past ``_renew_at`` (at the start, after a lost lease or
        :meth:`check_lease_now`, or a renewal aside that failed or is late) the loop renews it
        itself first, as before."""
        now = self.monotonic()
        if now < self._renew_at:
            if now >= self._renew_at - LEASE_SECONDS / 6 and self._renewing is None:
                aside = self._renew_aside(now, self._lease_epoch)
                self._renewing = asyncio.create_task(aside, name="outbox-lease")
            return True
        if self._renewing is not None:
            await asyncio.wait([self._renewing])  # its answer decides, not a second write beside it
            if self.monotonic() < self._renew_at:
                return True
        epoch = self._lease_epoch
        if await self._hold_lease():
            self._lease_renewed(now, epoch)
            return True
        self._renew_at = 0.0
        return False

    def _lease_renewed(self, began: float, epoch: int) -> None:
        """A renewal that began at ``began`` (monotonic) succeeded: trusted a third of the term
        from then, unless :meth:`check_lease_now` asked for a check after it began."""
        if epoch == self._lease_epoch:
            self._renew_at = max(self._renew_at, began + LEASE_SECONDS / 3)

    async def _renew_aside(self, began: float, epoch: int) -> None:
        """The lease's renewal beside the publishes (:meth:`_lease_held`). Lost to another
        replica, the next loop finds it out in its own renewal; failed, the lease is trusted
        until ``_renew_at`` and the loop's own renewal then raises the error in the loop."""
        try:
            if await self._hold_lease():
                self._lease_renewed(began, epoch)
            else:
                self._renew_at = 0.0
        except Exception as exc:
            log.info("outbox lease renewal failed (%s); renewed again before the next publish", exc)
        finally:
            self._renewing = None

    async def _hold_lease(self) -> bool:
        now = utcnow()
        try:
            await self.db[LEASE].find_one_and_update(
                {"_id": "relay", "$or": [{"owner": self.owner}, {"expires_at": {"$lt": now}}]},
                {"$set": {"owner": self.owner, "expires_at": now + timedelta(seconds=LEASE_SECONDS)}},
                upsert=True,
            )
            return True
        except DuplicateKeyError:
            return False  # another replica's relay holds the lease

    async def _end_renewal(self) -> None:
        """The renewal aside, if one is in flight, cancelled and ended: none after the release."""
        renewing, self._renewing = self._renewing, None
        if renewing is not None:
            renewing.cancel()
            await asyncio.gather(renewing, return_exceptions=True)

    async def _release_lease(self) -> None:
        await self._end_renewal()
        try:
            await self.db[LEASE].delete_one({"_id": "relay", "owner": self.owner})
        except Exception as exc:
            log.debug("lease release failed: %s", exc)
