"""The idempotent consumer: effect stored once, offset committed after, bad events parked.

For each message:
1. classify it (``crm_platform.dead_letters.classify``: size and depth bounds,
   the envelope, the topic's owner, a plausible time, the payload's (type,
   version) contract); anything that fails goes to the dead-letter topic with the
   reason, and its offset is committed at once so it is never dead-lettered twice;
2. in ONE transaction in this service's database: record the event id in the
   processed-events ledger (a duplicate id aborts: the effect is already there),
   run the handler, store the events it emits in the outbox and, when the event
   is a handoff addressed to this department, a ``handoff.received`` receipt;
3. after the batch's effects are stored, commit the offsets.

A crash between 2 and 3 redelivers the batch and the ledger drops the repeats.
Transient database or broker errors are retried with backoff, without skipping;
anything else that raises while one record is read or handled dead-letters that
one record and the consumer carries on with the next: no record can stop a
partition.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    TopicPartition,
)
from bson import ObjectId
from crm_contracts import HANDOFF_BY_EVENT_TYPE, Envelope, Event, utcnow, uuids
from crm_contracts.events.platform import HandoffReceivedV1
from crm_contracts.handoffs import Handoff
from crm_contracts.topics import dead_letter_topic
from pymongo.errors import ConnectionFailure, DuplicateKeyError, PyMongoError

from crm_platform import audit, metrics, receipts, tracing
from crm_platform.batch import Batch
from crm_platform.clock import demo_effect_time, simulated, system_clock
from crm_platform.dead_letters import (
    HANDLER_ERROR,
    UNREADABLE,
    CacheStrings,
    Rejected,
    classify,
    dead_letter_headers,
    short,
    skips_replay,
)
from crm_platform.kafka import (
    CLIENT_START_SECONDS,
    be_patient,
    hurry_fetches,
    make_consumer,
    make_producer,
    records_fetch_read,
    start_client,
    stop_client,
    wait_for_records_ms,
)
from crm_platform.logging import correlation_id_var
from crm_platform.mongo import PROCESSED, Store, Tx, audit_context, causation_var, commands_may_overlap
from crm_platform.shredding import PersonKeyPending, keys_missing, until_key_stored, until_keys_fetched

log = logging.getLogger("crm.consumer")
T = TypeVar("T")

Handler = Callable[[Tx, Any, Envelope], Awaitable[None]]
# A run of at most this many records (a live trickle's, not a backlog's) whose keys this process's
# key consumer is fetching waits for that fetch, at most KEY_FETCH_WAIT_SECONDS, before its keys
# are asked for in the database (``EventConsumer._await_keys``, crm_platform.shredding).
KEY_FETCH_RUN = 8
KEY_FETCH_WAIT_SECONDS = 0.1
# Which strings a consumed record's parse shares through pydantic-core's string cache
# (``dead_letters.classify``): the keys only. A record's values (ids, times, ciphertext, names)
# are nearly all new, so looking each up and replacing a cache entry costs more than it saves
# (the analytics worker's choice already): 31.9 -> 28.1 us per drained handoff with its key
# record, the same verdicts (docs/performance.md, twenty-sixth session, salesdrain). Nothing a
# consumer keeps for long comes from the cache.
CACHE_STRINGS: CacheStrings = "keys"
AfterStore = Callable[[Envelope], Awaitable[None] | None]
OnClassified = Callable[[Envelope, Event], None]


class DeadLetter(Exception):
    """Raised by a handler for an event it can never process (a business reason)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


Lane = Callable[[TopicPartition, list[ConsumerRecord[Any, Any]]], Coroutine[Any, Any, None]]


class _Lanes:
    """The partitions being handled: one batch per partition at a time (``handle``, a task),
    the partition's later records queued until it ends, then handled in order, at most
    ``per_batch`` at a time. ``taken`` counts the records queued or being handled."""

    def __init__(
        self,
        handle: Lane,
        per_batch: int,
        stopping: asyncio.Event,
        on_failure: Callable[[], None] | None = None,
    ) -> None:
        self._handle = handle
        self._per_batch = per_batch
        self._stopping = stopping
        self._on_failure = on_failure  # the loop's wait for records ends (EventConsumer._wake_fetch)
        self._tasks: dict[TopicPartition, asyncio.Task[None]] = {}
        self._queued: dict[TopicPartition, list[ConsumerRecord[Any, Any]]] = {}
        self._room = asyncio.Event()
        self._begun = 0  # batches begun
        self._began: dict[TopicPartition, int] = {}  # each partition's latest batch: the nth begun
        self.taken = 0
        self.failure: BaseException | None = None

    def add(self, tp: TopicPartition, records: list[ConsumerRecord[Any, Any]]) -> None:
        self.taken += len(records)
        if tp in self._tasks or tp in self._queued:
            self._queued.setdefault(tp, []).extend(records)
        else:
            self._start(tp, records)

    def _start(self, tp: TopicPartition, records: list[ConsumerRecord[Any, Any]]) -> None:
        batch, rest = records[: self._per_batch], records[self._per_batch :]
        if rest:
            self._queued[tp] = rest
        task = asyncio.create_task(self._handle(tp, batch))
        self._tasks[tp] = task
        self._begun += 1
        self._began[tp] = self._begun
        task.add_done_callback(functools.partial(self._ended, tp, len(batch)))

    def _ended(self, tp: TopicPartition, n: int, task: asyncio.Task[None]) -> None:
        del self._tasks[tp]
        self.taken -= n
        self._room.set()
        if not task.cancelled() and task.exception() is not None and self.failure is None:
            self.failure = task.exception()
            if self._on_failure is not None:
                self._on_failure()
        more = self._queued.pop(tp, None)
        if more is None:
            return
        if task.cancelled() or self.failure is not None or self._stopping.is_set():
            self.taken -= len(more)  # not handled, not committed: fetched again after a reconnect
            return
        self._start(tp, more)

    def busy(self) -> bool:
        return bool(self._tasks)

    def idle_first(self, partitions: set[TopicPartition]) -> list[TopicPartition]:
        """Of ``partitions``, those with no batch being handled and none queued, the one whose
        latest batch began longest ago (or never) first: who a fetch asks first while others
        are busy (``EventConsumer._fetch``)."""
        idle = (tp for tp in partitions if tp not in self._tasks and tp not in self._queued)
        return sorted(idle, key=lambda tp: (self._began.get(tp, 0), _tp_order(tp)))

    async def wait_for_room(self) -> None:
        self._room.clear()
        await self._room.wait()

    def cancel(self) -> None:
        for task in self._tasks.values():
            task.cancel()

    async def ended(self) -> None:
        """Wait until no batch is being handled (a batch's end may start its partition's next)."""
        while self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)


class _FetchWoken(Exception):
    """Ends an event consumer's wait for records (``EventConsumer._wake_fetch``)."""


class _Commits:
    """A consumer's offset commits, gathered: a batch's end adds its offsets (``add``) and they are
    committed ``gather_seconds`` later with those of every batch ended meanwhile, in ONE request;
    ``now`` commits at once with everything gathered (a dead letter's offset, the loop's end).
    ``gather_seconds`` 0: each batch's commit at once, as before.

    A lone handoff's batch committed its offsets as it ended: an OffsetCommit round trip per
    record, in each consumer it passes (sales' department and key consumers, leads' department
    consumer for the assignment), each a send, an answer and a wake-up in the service and a
    request in the broker; gathered over 0.2 s at 25 handoffs/s, five a second per consumer
    instead of 25 (docs/performance.md, twenty-fourth session, p99). Nothing waits for them:
    a partition's next batch begins as its last one ends. Records stored and not committed yet
    when the process dies come again and are dropped as repeats (the ledger, or a handler
    idempotent by its own write), as those between a commit and a crash always were. Commits go
    one at a time and each takes everything gathered, so a partition's committed offset only
    moves forward. A failed commit is the loop's failure (``failure``): it reconnects, as when a
    batch's own commit failed."""

    def __init__(
        self, consumer: AIOKafkaConsumer, gather_seconds: float, on_failure: Callable[[], None] | None = None
    ) -> None:
        self._consumer = consumer
        self._gather = gather_seconds
        self._on_failure = on_failure  # the loop's wait for records ends (EventConsumer._wake_fetch)
        self._pending: dict[TopicPartition, int] = {}
        self._lock = asyncio.Lock()
        self._timer: asyncio.Task[None] | None = None
        self.failure: BaseException | None = None

    async def add(self, offsets: dict[TopicPartition, int]) -> None:
        if self._gather <= 0:
            await self._consumer.commit(offsets)  # at once, beside any other batch's, as before
            return
        self._merge(offsets)
        if self._timer is None:
            self._timer = asyncio.create_task(self._later(), name="consumer-commits")

    def _merge(self, offsets: dict[TopicPartition, int]) -> None:
        for tp, offset in offsets.items():
            if offset > self._pending.get(tp, -1):
                self._pending[tp] = offset

    async def _later(self) -> None:
        try:
            await asyncio.sleep(self._gather)
            self._timer = None
            await self.now()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self.failure is None:
                self.failure = exc  # the loop raises it once its wait for records ends
                if self._on_failure is not None:
                    self._on_failure()
        finally:
            if self._timer is asyncio.current_task():
                self._timer = None

    async def now(self, offsets: dict[TopicPartition, int] | None = None) -> None:
        """Commit ``offsets`` and everything gathered, at once (after any commit in flight)."""
        if offsets:
            self._merge(offsets)
        async with self._lock:
            pending, self._pending = self._pending, {}
            if pending:
                await self._consumer.commit(pending)

    async def close(self) -> None:
        """The loop's end: the gathered offsets committed now, the timer stopped."""
        timer, self._timer = self._timer, None
        if timer is not None and not timer.done():
            timer.cancel()
        await self.now()


class _CommitsFirst(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka ships no types
    """The consumer's rebalance listener: the offsets gathered so far (``_Commits``) are
    committed before partitions are taken away (while this member still owns them), then the
    configured listener (crm_platform.liveness) is told."""

    def __init__(self, owner: EventConsumer, inner: ConsumerRebalanceListener | None) -> None:
        self._owner = owner
        self._inner = inner

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        commits = self._owner._commits
        if commits is not None:
            try:
                await commits.now()
            except Exception as exc:  # their records come again to the next owner: repeats
                log.info("gathered offsets not committed before a rebalance (%s)", _short(exc))
        if self._inner is not None:
            await _told(self._inner.on_partitions_revoked(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        if self._inner is not None:
            await _told(self._inner.on_partitions_assigned(assigned))


async def _told(result: Any) -> None:
    """A listener's answer awaited if it is a coroutine (aiokafka takes either)."""
    if inspect.isawaitable(result):
        await result


@dataclass
class ConsumerConfig:
    service: str
    group_id: str
    topics: list[str]
    bootstrap: str
    department: str | None = None  # receivers of handoffs emit receipts and latency
    # Per partition and batch (one transaction: group commit), and at most max_fetch_records in
    # one fetch across partitions (what is in flight at once: about 25 KB of Python objects
    # each while stored). 250 and 1,000, not 100 per partition (up to 600 over six): a 60,000-
    # event drain on the quiet machine took 0.48 ms of CPU per event in all processes against
    # 0.55-0.58, sales' peak RSS 143 MB against 137-140 (250 from each of six, 1,500 at once:
    # 186 MB at load; docs/performance.md, eleventh session, drain). 750, not 1,000, since
    # batches of idle partitions come first (``_fetch``): 1,000 were four batches at once, sales'
    # peak RSS 145 MB in the 100,000 drain against 139 with three (131 when one partition
    # ran at a time); three keep sales busy while the others wait (twenty-second session).
    max_records: int = 250
    max_fetch_records: int = 750
    retry_max_seconds: float = 30.0
    # How long each Kafka client's start may take (CRM_KAFKA_START_SECONDS, crm_platform.kafka.start_client)
    start_seconds: float = CLIENT_START_SECONDS
    group_instance_id: str | None = None  # static membership (group.instance.id)
    listener: ConsumerRebalanceListener | None = None  # told of assignments (crm_platform.liveness)
    demo_clock: bool = False  # CRM_DEMO_CLOCK: effects at the event's own time (crm_platform.clock)
    # How long an event whose person key has not arrived is retried before it is dead-lettered
    # (crm_platform.shredding; CRM_PERSON_KEY_WAIT_SECONDS, under the liveness stall window)
    key_wait_seconds: float = 60.0
    # This department opens sealed events (it holds keys from a key topic): a batch first waits
    # briefly for the keys it needs, so it is stored in one transaction instead of being split
    # at every event whose key is a few milliseconds behind it.
    holds_keys: bool = False
    batch_key_wait_seconds: float = 2.0
    # Keep the processed-events ledger (an entry per event, a lookup per batch). False only for
    # a consumer whose every handler is idempotent by its own write, so a redelivered event
    # changes nothing without it: the key consumer (a held key is inserted only when none is
    # held, a shredding is an upsert of the marker). One insert and its index entry fewer per
    # sealed handoff in a key holder (docs/performance.md, thirteenth session, handoff).
    ledger: bool = True
    # Event types whose handler is idempotent by its own write (a repeat changes nothing, in
    # any order) and that are no handoff (a repeated handoff's receipt is published again from
    # the ledger's verdict): no ledger entry and no ledger lookup for them, the consumer's other
    # events keep theirs. Leads' ``sales.lead_assigned`` (an assignment as old as the stored one
    # or older is ignored): one insert and its index entry fewer per handoff in leads
    # (docs/performance.md, sixteenth session, handoff).
    unledgered: frozenset[str] = frozenset()
    # Every handler's effect on a record alone is ONE write of one platform document, idempotent
    # by itself (the key consumer's: a held key's ``$setOnInsert`` upsert, a shredding marker's
    # upsert), and the consumer keeps no ledger: a record alone is stored without a transaction
    # (``Store.one_write``: its write acknowledged by the majority, as a commit is), one mongod
    # command instead of the write and a commit, per sealed handoff (docs/performance.md,
    # twentieth session, p99sales). A batch of records too: its handlers' inserts go in one
    # unordered insert where absent, without a read or a transaction (twenty-first session,
    # drainkeys).
    one_write_alone: bool = False
    # No one waits on this consumer's records within a second (the gateway's erasure
    # confirmations): once idle it takes the patient pause (crm_platform.kafka.be_patient).
    # Never for a consumer on a handoff's path (a department's, the person keys').
    patient: bool = False
    # Patient, and its patient pause ends when another consumer of the process fetches records
    # (the person keys': a key is published with the events sealed with it; kafka.be_patient).
    patient_until_records: bool = False
    # A batch's offsets are committed this long after it ends, with those of the batches ended
    # meanwhile, in one request (:class:`_Commits`); 0: each batch's at once.
    # CRM_CONSUMER_COMMIT_GATHER_SECONDS in the services.
    commit_gather_seconds: float = 0.0

    @property
    def full_batch(self) -> int:
        """The room a fetch needs: one partition's whole batch, within the bound on records taken."""
        return min(self.max_records, self.max_fetch_records)


@dataclass
class Outcome:
    outcome: str  # processed | duplicate | dead_lettered | ignored
    reason: str | None = None


@dataclass
class _Batch:
    offsets: dict[TopicPartition, int] = field(default_factory=dict)


@dataclass
class _Ready:
    """A record that classified as valid and has a handler: its effect is to be stored."""

    record: ConsumerRecord[Any, Any]
    handler: Handler
    event: Event
    envelope: Envelope
    # The event id as text, made once: a run's ledger look-up, its ledger entry and the run's
    # split into seen and fresh each took ``str(UUID)`` again (0.5-0.7 us each; 3-6% of the key
    # consumer's samples; docs/performance.md, twenty-second session, drainsales).
    event_id: str = field(init=False)

    def __post_init__(self) -> None:
        self.event_id = uuids.text(self.envelope.event_id)


@dataclass(frozen=True)
class _StoredMetrics:
    """The metric children one (topic, event type) of stored records moves."""

    consumed: Any  # crm_events_consumed{outcome="processed"}
    processing: Any  # crm_event_processing_seconds
    transport: Any | None  # crm_handoff_transport_latency_seconds, for a handoff to this department


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, ConnectionFailure):
        return True
    if isinstance(exc, PyMongoError):
        return exc.has_error_label("TransientTransactionError") or exc.has_error_label("RetryableWriteError")
    return False


class EventConsumer:
    def __init__(
        self,
        config: ConsumerConfig,
        store: Store,
        handlers: dict[str, Handler],
        *,
        after_store: AfterStore | None = None,
        on_classified: OnClassified | None = None,
    ) -> None:
        if handoffs := sorted(config.unledgered & HANDOFF_BY_EVENT_TYPE.keys()):
            raise ValueError(f"a handoff keeps its ledger entry (its repeat's receipt): {handoffs}")
        if config.one_write_alone and (config.ledger or config.department is not None):
            raise ValueError("one write alone: no ledger entry and no receipt to store with it")
        self.config = config
        self.store = store
        self.handlers = handlers
        self.after_store = after_store
        # Told of each valid record with a handler as its fetch is read, before its transaction
        # (the key consumer's fetched keys: crm_platform.shredding.key_fetched).
        self.on_classified = on_classified
        self.dlq_topic = dead_letter_topic(config.service)
        self._stopping = asyncio.Event()
        # Per (topic, event type): the metric children a stored record moves, looked up once
        # (a ``labels()`` call is about 1 us, three per record; docs/performance.md, eleventh
        # session, drain).
        self._stored_metrics: dict[tuple[str, str], _StoredMetrics] = {}
        self._turn = 0  # which of the other partitions a fetch asks first (``_fetch``)
        # Records classified as they were taken (``_classify_ahead``), by (topic, partition, offset).
        self._ahead: dict[tuple[str, int, int], _Ready | Outcome | None] = {}
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self._commits: _Commits | None = None  # the running loop's (``_loop``)

    async def stop(self) -> None:
        self._stopping.set()
        self._wake_fetch()

    def _wake_fetch(self) -> None:
        """End the loop's wait for records (``getmany``) now: a stop, or a lane's failure, is seen
        at once, not at the wait's timeout (``kafka.RECORDS_WAIT_SECONDS``). aiokafka's fetch
        waiters take an exception as they do for a critical error (``abort_waiters``);
        :meth:`_fetch` takes it as no records."""
        fetcher = getattr(self.consumer, "_fetcher", None)
        for waiter in list(getattr(fetcher, "_fetch_waiters", ())):
            if not waiter.done():
                waiter.set_exception(_FetchWoken())

    async def run(self) -> None:
        """Consume until stopped; reconnect with backoff when the broker goes away."""
        backoff = 0.5
        while not self._stopping.is_set():
            try:
                await self._connect()
                backoff = 0.5
                await self._loop()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "consumer %s failed (%s); reconnecting in %.1f s", self.config.group_id, exc, backoff
                )
                await self._disconnect()
                await self._sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        await self._disconnect()

    async def _connect(self) -> None:
        if self.consumer is not None:
            return
        self.producer = make_producer(self.config.bootstrap, f"{self.config.service}-dlq")
        await start_client(self.producer, self.config.start_seconds)
        self.consumer = make_consumer(
            bootstrap_servers=self.config.bootstrap,
            group_id=self.config.group_id,
            group_instance_id=self.config.group_instance_id,
            client_id=f"{self.config.service}-consumer",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        if self.config.patient or self.config.patient_until_records:
            be_patient(self.consumer, until_records=self.config.patient_until_records)
        listener = self.config.listener
        if self.config.commit_gather_seconds > 0:
            listener = _CommitsFirst(self, listener)
        self.consumer.subscribe(self.config.topics, listener=listener)
        await start_client(self.consumer, self.config.start_seconds)
        log.info("consumer %s subscribed to %s", self.config.group_id, self.config.topics)

    async def reset(self) -> None:
        """Drop the Kafka clients; ``run`` connects afresh (the liveness watchdog's rejoin)."""
        await self._disconnect()

    async def _disconnect(self) -> None:
        consumer, self.consumer = self.consumer, None
        producer, self.producer = self.producer, None
        for client in (consumer, producer):
            if client is not None:
                await stop_client(client)  # bounded (see liveness.harden_aiokafka)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        except TimeoutError:
            pass

    async def _loop(self) -> None:
        """Fetch, and hand each fetched partition's records to a lane of its own (:class:`_Lanes`).

        Partitions are independent: each partition's records are handled strictly in order,
        one batch at a time, so one aggregate's events keep their order, while the loop goes
        on fetching. A record never waits for another partition's transaction, commit or
        offset commit to end, only for its own partition's earlier records: at 25 handoffs/s a
        handoff fetched while another partition's batch was being handled waited for all of it
        (most of the 25/s p99 above the p50; docs/performance.md, sixteenth session, latency).
        Every fetched record is taken out of the client at once (records left in aiokafka's
        buffer hold back its fetches of every other partition), the ones of a partition being
        handled queued in its lane; each batch commits its partition's offsets as it ends. At
        most ``max_fetch_records`` records are taken and not yet handled at a time, as one
        fetch's worth was before, and the loop fetches only with room for a whole batch
        (``max_records``): a fetch with less room would take a partition's batch in pieces.
        """
        assert self.consumer is not None
        commits = self._commits = _Commits(self.consumer, self.config.commit_gather_seconds, self._wake_fetch)
        lanes = _Lanes(
            lambda tp, records: self._handle_and_commit(commits, tp, records),
            self.config.max_records,
            self._stopping,
            on_failure=self._wake_fetch,
        )
        try:
            while not self._stopping.is_set() and lanes.failure is None and commits.failure is None:
                room = self.config.max_fetch_records - lanes.taken
                if room < self.config.full_batch:
                    # A fetch with less room than a batch would split a partition's batch (a
                    # record batch produced together, a group's one transaction) into pieces.
                    await lanes.wait_for_room()
                    continue
                batches = await self._fetch(room, lanes)
                if self.on_classified is not None and batches:
                    self._classify_ahead(batches)
                for tp, records in batches.items():
                    lanes.add(tp, records)
        except asyncio.CancelledError:
            lanes.cancel()  # the loop itself is cancelled: nothing is left to wait for them
            raise
        finally:
            # Otherwise every batch being handled reaches its end (a stop ends it between
            # records; a failure elsewhere lets it finish) and commits what it stored before the
            # loop returns or raises and the clients may be closed. Queued records were not
            # committed: they come again after a reconnect.
            await lanes.ended()
            self._ahead.clear()  # records not handled are fetched again after a reconnect
            await self._close_commits(commits)
        if (failure := lanes.failure or commits.failure) is not None:
            raise failure

    async def _close_commits(self, commits: _Commits) -> None:
        """What the batches stored is committed before the loop returns or raises (the gathered
        offsets: ``_Commits``); a failure to is the loop's, unless it has one already."""
        try:
            await commits.close()
        except Exception as exc:
            if commits.failure is None:
                commits.failure = exc
        finally:
            self._commits = None

    def _classify_ahead(self, batches: dict[TopicPartition, list[ConsumerRecord[Any, Any]]]) -> None:
        """Classify every record taken now, not when its partition's lane gets to it, for a
        consumer told of each classified record (``on_classified``: the person keys', whose keys
        open sealed events as soon as they are fetched, even while an earlier key of their
        partition is being stored); then its fetch is read (``kafka.records_fetch_read``: a
        handoff's key check waiting for that fetch looks at the keys now)."""
        for records in batches.values():
            for record in records:
                self._ahead[(record.topic, record.partition, record.offset)] = self._prepare(record)
        if self.consumer is not None:
            records_fetch_read(getattr(self.consumer, "_fetcher", None))

    async def _handle_and_commit(
        self, commits: _Commits, tp: TopicPartition, records: list[ConsumerRecord[Any, Any]]
    ) -> None:
        offsets: dict[TopicPartition, int] = {}
        try:
            await self._handle_partition(tp, records, offsets)
        finally:
            # Every record up to this offset reached its final outcome (effect stored or dead
            # letter acked): committed even if handling failed later in the partition, so a
            # reconnect never handles (or dead-letters) them again; gathered with the other
            # batches' (``_Commits``: at the latest as the loop ends).
            if offsets:
                await commits.add(offsets)

    async def _fetch(
        self, room: int | None = None, lanes: _Lanes | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord[Any, Any]]]:
        """Wait for records, then take what the other partitions already hold.

        ``getmany`` fills its batch from one partition at a time; asking each
        other partition without waiting gives a batch that spans partitions, so
        they can be handled side by side, without adding latency when idle. At most
        ``room`` (``max_fetch_records``) in all, another partition asked only while a whole
        batch fits; the partitions asked after the first take turns
        at coming first, so none waits behind the others while a backlog lasts.

        While ``lanes`` handle batches, the partitions without one are asked first: ``getmany``
        takes from the partition it holds records of longest, which in a backlog is a busy
        one, and its records queued behind its batch took the room a lane's end freed, so
        the drain ran one partition at a time (one lane in flight 70% of a 30,000 drain; the
        idle ones' records waited). A busy partition's records are taken when no idle one has
        any (records left in aiokafka's buffer hold back its next fetches).
        """
        assert self.consumer is not None
        per_partition = self.config.max_records
        room = self.config.max_fetch_records if room is None else room
        idle = lanes.idle_first(self.consumer.assignment()) if lanes is not None and lanes.busy() else []
        if idle and (batches := await self._take(idle, room)):
            return batches
        try:
            # Until records come, a stop or a lane's failure (_wake_fetch), or about a second on
            # the process's wake-up grid (kafka.wait_for_records_ms): not a wake-up of its own.
            got = await self.consumer.getmany(
                timeout_ms=wait_for_records_ms(), max_records=min(per_partition, room)
            )
        except _FetchWoken:
            return {}
        batches = dict(got)
        if not batches:
            return batches
        room -= sum(len(records) for records in batches.values())
        others = sorted((tp for tp in self.consumer.assignment() if tp not in batches), key=_tp_order)
        self._turn = (self._turn + 1) % max(1, len(others))
        batches.update(await self._take(others[self._turn :] + others[: self._turn], room))
        return batches

    async def _take(
        self, partitions: list[TopicPartition], room: int
    ) -> dict[TopicPartition, list[ConsumerRecord[Any, Any]]]:
        """What ``partitions`` already hold, asked in turn without waiting, while a whole batch fits."""
        assert self.consumer is not None
        per_partition = self.config.max_records
        batches: dict[TopicPartition, list[ConsumerRecord[Any, Any]]] = {}
        for tp in partitions:
            if room < self.config.full_batch:
                break  # no room for a whole batch: the partition's records are taken later, whole
            extra = await self.consumer.getmany(tp, timeout_ms=0, max_records=min(per_partition, room))
            for got, records in extra.items():
                batches[got] = records
                room -= len(records)
        return batches

    async def _handle_partition(
        self,
        tp: TopicPartition,
        records: list[ConsumerRecord[Any, Any]],
        offsets: dict[TopicPartition, int],
    ) -> None:
        """One partition's records, in order, with group commit.

        Consecutive records that classify as valid and have a handler are stored
        together in ONE transaction (:meth:`_store_group`: each event's ledger
        entry, handler and receipt, then one commit), so a batch costs a few round
        trips instead of several per event. A record that must be dead-lettered
        first has the records before it stored, then goes to the DLQ with its
        offset committed at once, as before.
        """
        group: list[_Ready] = []
        ignored_through = 0  # records without a handler: skipped, they need no transaction
        for record in records:
            if self._stopping.is_set():
                break
            at = (record.topic, record.partition, record.offset)
            prepared = self._ahead.pop(at) if at in self._ahead else self._prepare(record)
            if isinstance(prepared, _Ready):
                group.append(prepared)
            elif prepared is not None:
                ignored_through = record.offset + 1
                await self.on_outcome(record, prepared)
            else:  # rejected by classification or unreadable: store what precedes, then dead-letter
                if not await self._flush(tp, group, offsets, ignored_through):
                    return
                group = []
                await self._settle(tp, record, await self.handle_record(record), offsets)
        await self._flush(tp, group, offsets, ignored_through)

    async def _settle(
        self,
        tp: TopicPartition,
        record: ConsumerRecord[Any, Any],
        outcome: Outcome,
        offsets: dict[TopicPartition, int],
    ) -> None:
        assert self.consumer is not None
        offsets[tp] = record.offset + 1
        await self.on_outcome(record, outcome)
        if outcome.outcome == "dead_lettered":
            # A dead letter is not idempotent like an effect (no ledger): commit
            # at once so even a crash cannot send this record to the DLQ twice.
            if self._commits is not None:
                await self._commits.now({tp: record.offset + 1})  # with what is gathered
            else:
                await self.consumer.commit({tp: record.offset + 1})

    def _prepare(self, record: ConsumerRecord[Any, Any]) -> _Ready | Outcome | None:
        """Classify without side effects: ready to store, ignored (no handler, or a replayed
        dead letter meant for another group), or None (dead letter)."""
        if skips_replay(record.headers, self.config.group_id):
            event_type = _header(record, "event_type") or "unknown"
            metrics.EVENTS_CONSUMED.labels(self.config.service, record.topic, event_type, "ignored").inc()
            return Outcome("ignored")
        try:
            raw = record.value if isinstance(record.value, bytes) else None
            verdict = classify(raw, topic=record.topic, cache_strings=CACHE_STRINGS)
        except Exception:
            return None  # handle_record dead-letters it as unreadable, with the error
        if isinstance(verdict, Rejected):
            return None
        handler = self.handlers.get(verdict.envelope.event_type)
        if handler is None:
            metrics.EVENTS_CONSUMED.labels(
                self.config.service, record.topic, verdict.envelope.event_type, "ignored"
            ).inc()
            return Outcome("ignored")
        if self.on_classified is not None:
            self.on_classified(verdict.envelope, verdict.event)
        return _Ready(record, handler, verdict.event, verdict.envelope)

    async def _flush(
        self,
        tp: TopicPartition,
        group: list[_Ready],
        offsets: dict[TopicPartition, int],
        ignored_through: int,
    ) -> bool:
        """Store a run of ready records: already-seen ones skipped, the rest in one transaction.

        For more than one record, one query first asks the ledger which of the run's events
        it holds (a batch redelivered after a crash): those are duplicates, answered without
        a transaction.
        True when every record reached its outcome (then ignored records up to
        ``ignored_through`` may be committed too); False if a stop interrupted it.
        """
        if group:
            # One record alone: its own transaction's ledger insert finds a repeat at no extra cost.
            seen = await self._already_seen(group) if len(group) > 1 else set()
            fresh = group
            if seen:  # a batch delivered again: the ledger's events are duplicates
                for ready in (r for r in group if r.event_id in seen):
                    await self.on_outcome(ready.record, await self._duplicate(ready))
                fresh = [r for r in group if r.event_id not in seen]
            if not await self._store_run(tp, fresh, offsets):
                return False
            offsets[tp] = max(offsets.get(tp, 0), group[-1].record.offset + 1)
        if ignored_through > offsets.get(tp, 0):
            offsets[tp] = ignored_through
        return True

    def _ledger_entry(self, ready: _Ready, row_key: ObjectId) -> dict[str, Any]:
        """The record's ledger entry; a handoff to this department's names the outbox row its
        receipt is stored in (``receipts.RECEIPT_ROW``: its transaction's ``Tx.row_key``), where
        a re-sent copy's receipt is found again (``receipts.confirm_again``)."""
        entry = _ledger_doc(ready)
        if self._receives(ready.envelope):
            entry[receipts.RECEIPT_ROW] = row_key
        return entry

    def _ledgered(self, envelope: Envelope) -> bool:
        """Whether this event has a processed-events ledger entry (``ConsumerConfig.unledgered``)."""
        return self.config.ledger and envelope.event_type not in self.config.unledgered

    async def _duplicate(self, ready: _Ready) -> Outcome:
        """The outcome of an event the ledger already holds (its receipt re-published)."""
        c_token = correlation_id_var.set(ready.envelope.correlation_id)
        e_token = causation_var.set(ready.envelope)
        try:
            return await self._skip_duplicate(ready.record, ready.envelope, self._receives(ready.envelope))
        finally:
            correlation_id_var.reset(c_token)
            causation_var.reset(e_token)

    async def _already_seen(self, group: list[_Ready]) -> set[str]:
        """The ids of ``group`` already in the processed-events ledger (one ``$in`` query).

        Only a shortcut: if it fails, nothing is skipped, and the ledger's unique key still
        refuses a second effect inside the transaction.
        """
        ids = [r.event_id for r in group if self._ledgered(r.envelope)]
        if not ids:
            return set()
        try:
            cursor = self.store.db[PROCESSED].find({"_id": {"$in": ids}}, {"_id": 1})
            return {str(d["_id"]) async for d in cursor}
        except Exception as exc:
            if self._stopping.is_set():
                raise
            log.info(
                "ledger lookup of %d events failed (%s); storing them as they come", len(ids), _short(exc)
            )
            return set()

    async def _store_run(
        self, tp: TopicPartition, run: list[_Ready], offsets: dict[TopicPartition, int]
    ) -> bool:
        """``run`` in one transaction; a record whose handler fails is set apart, not the batch.

        When a handler raises (a poisoned event, a dead letter), the records before it are
        stored together again, that one alone (its own outcome: a dead letter, or stored if
        the failure was passing), then the records after it together. A failure that names
        no record (the commit, a deferred insert) stores the run one by one, as before.
        """
        start = 0
        while start < len(run):
            rest = run[start:]
            await self._await_keys(rest)  # one alone too: no transaction begun just to abort
            failed = await self._store_group(rest) if len(rest) > 1 else 0
            if failed is None:
                offsets[tp] = rest[-1].record.offset + 1
                return True
            if failed < 0:
                return await self._one_by_one(tp, rest, offsets)
            if failed > 0 and not await self._store_run(tp, rest[:failed], offsets):
                return False
            if self._stopping.is_set():
                return False
            await self._settle(tp, rest[failed].record, await self._finish(rest[failed]), offsets)
            start += failed + 1
        return True

    async def _await_keys(self, run: list[_Ready]) -> None:
        """Wait (bounded) until the keys ``run``'s sealed events need are here: woken when this
        process stores a key, else on a short backoff. Past the bound the run is stored anyway,
        and an event still without its key waits alone (``_store_retrying``)."""
        if not self.config.holds_keys:
            return
        deadline = time.monotonic() + self.config.batch_key_wait_seconds
        wait = 0.01
        events = [r.event for r in run]
        try:
            if len(run) <= KEY_FETCH_RUN:  # a live trickle's: its keys are on their way with it
                await until_keys_fetched(events, KEY_FETCH_WAIT_SECONDS)
            while await keys_missing(self.store.db, events) and time.monotonic() < deadline:
                metrics.PERSON_KEY_WAITS.labels(self.config.service, run[0].record.topic).inc()
                hurry_fetches()  # the key consumer fetches now, not after its empty-fetch pause
                if await until_key_stored(wait) and len(run) == 1:
                    return  # most likely its own key: the transaction checks (PersonKeyPending)
                wait = min(wait * 2, 0.5)
        except Exception as exc:  # the check is an optimisation: storing proceeds as before
            if self._stopping.is_set():
                raise
            log.info("key check of %d events failed (%s); storing them as they come", len(run), _short(exc))

    async def _one_by_one(
        self, tp: TopicPartition, run: list[_Ready], offsets: dict[TopicPartition, int]
    ) -> bool:
        for ready in run:
            if self._stopping.is_set():
                return False
            await self._settle(tp, ready.record, await self._finish(ready), offsets)
        return True

    async def _store_group(self, group: list[_Ready]) -> int | None:
        """Store every record's effect in ONE transaction: None, or what kept it from committing.

        Inside: the ledger entries of the whole group (one insert; a duplicate id
        fails it), then each handler in offset order with its own correlation,
        causation and audit cause (its changes' entries name it: ``audit.cause_var``,
        deferred writes too), and each receipt. The group shares one snapshot, so a handler
        sees the writes of the records before it, as it would one by one; ``tx.batch``
        (crm_platform.batch) lets handlers load what the whole group needs at once.
        When it fails nothing is stored, and the result is the index of the record whose
        handler raised, or -1 when the failure was not a handler's.
        """
        started = time.perf_counter()
        stored_at: list[datetime] = []
        failing: list[int] = []
        journeys: dict[str, tracing.Carrier | None] = {}

        async def work(tx: Tx) -> None:
            stored_at.clear()
            failing.clear()
            tx.batch = batch = Batch([(r.event, r.envelope) for r in group])
            tx.batch_emits = True  # the group's receipts and events: one outbox row, in order
            tx.row_key = ObjectId()  # that row's key, named by each received handoff's ledger entry
            if entries := [self._ledger_entry(r, tx.row_key) for r in group if self._ledgered(r.envelope)]:
                await tx.db[PROCESSED].insert_many(entries, session=tx.session)
                batch.begun = commands_may_overlap(tx.session)  # reads side by side (Batch.preload)
            await _settling(batch, handle_all(tx, batch))

        async def handle_all(tx: Tx, batch: Batch) -> None:
            for i, ready in enumerate(group):
                batch.position = i
                try:
                    at, carrier = await self._run_grouped(tx, ready)
                except BaseException:
                    failing.append(i)
                    raise
                journeys.setdefault(ready.envelope.correlation_id, carrier)
                stored_at.append(at)

        try:
            await self._stored(work)
        except Exception as exc:
            if self._stopping.is_set():
                raise
            where = f"at offset {group[failing[0]].record.offset}" if failing else "not a handler"
            log.info("group of %d events not stored together (%s, %s)", len(group), where, _short(exc))
            return failing[0] if failing else -1
        await tracing.remember_journeys(self.store.db, journeys)
        await self._group_stored(group, stored_at, (time.perf_counter() - started) / len(group))
        return None

    async def _run_grouped(self, tx: Tx, ready: _Ready) -> tuple[datetime, tracing.Carrier | None]:
        """One event of a grouped transaction: its handler with its own correlation, causation
        and audit cause, so its changes' entries name it, not the transaction (whose context,
        taken as it began, names no event); its deferred writes keep it (``Tx.insert_later``)."""
        c_token = correlation_id_var.set(ready.envelope.correlation_id)
        e_token = causation_var.set(ready.envelope)
        a_token = audit.cause_var.set(audit_context(self.store.source))
        try:
            return await self._run_handler(tx, ready)
        finally:
            audit.cause_var.reset(a_token)
            correlation_id_var.reset(c_token)
            causation_var.reset(e_token)

    async def _group_stored(self, group: list[_Ready], stored_at: list[datetime], elapsed: float) -> None:
        """Each record of a committed group: its metrics, the after-store hook, its outcome."""
        for ready, at in zip(group, stored_at, strict=True):
            self._observe_stored(ready.record, ready.envelope, at).processing.observe(elapsed)
            await self._after_store(ready.envelope)
            await self.on_outcome(ready.record, Outcome("processed"))

    async def _run_handler(self, tx: Tx, ready: _Ready) -> tuple[datetime, tracing.Carrier | None]:
        """The handler and the receipt, in a CONSUMER span continuing the record's trace;
        returns when the effect was stored and that span's context (None when tracing is off)."""
        record, envelope = ready.record, ready.envelope
        group = self.config.group_id
        with (
            tracing.consuming(record.headers, topic=record.topic, envelope=envelope, group=group),
            simulated(self._demo_time(envelope)),
        ):
            await ready.handler(tx, ready.event, envelope)
            stored_at = system_clock()
            receipt = self._receipt(envelope, stored_at)
            if receipt is not None:
                tx.emit(receipt)
            return stored_at, tracing.current_carrier()

    async def on_outcome(self, record: ConsumerRecord[Any, Any], outcome: Outcome) -> None:
        """Each record's final outcome once it is durable, before its offset is committed.

        Does nothing; a subclass may observe outcomes (the crash test records them).
        """

    def _demo_time(self, envelope: Envelope) -> datetime | None:
        """Under the demo clock, the moment the event's effect happens (its own time plus
        the real transport); otherwise None, the real time (crm_platform.clock)."""
        if not self.config.demo_clock:
            return None
        return demo_effect_time(envelope.occurred_at, envelope.produced_at, utcnow())

    def _handoff_to_us(self, envelope: Envelope) -> Handoff | None:
        """The handoff ``envelope`` carries when it is addressed to this department."""
        handoff = HANDOFF_BY_EVENT_TYPE.get(envelope.event_type)
        return handoff if handoff is not None and handoff.to_department == self.config.department else None

    def _receives(self, envelope: Envelope) -> bool:
        return self._handoff_to_us(envelope) is not None

    def _receipt(self, envelope: Envelope, stored_at: datetime) -> HandoffReceivedV1 | None:
        """The ``handoff.received`` receipt when ``envelope`` is a handoff to this department."""
        handoff = self._handoff_to_us(envelope)
        if handoff is None:
            return None
        return HandoffReceivedV1(
            handoff=handoff.name,
            handoff_event_id=uuids.text(envelope.event_id),
            handoff_event_type=envelope.event_type,
            from_department=handoff.from_department,
            to_department=handoff.to_department,
            occurred_at=envelope.occurred_at,
            stored_at=stored_at,
            transport_latency_seconds=(stored_at - envelope.occurred_at).total_seconds(),
        )

    def _observe_stored(
        self, record: ConsumerRecord[Any, Any], envelope: Envelope, stored_at: datetime
    ) -> _StoredMetrics:
        """A stored record counted (and its handoff's transport latency); returns its children."""
        children = self._stored_metrics.get((record.topic, envelope.event_type))
        if children is None:
            children = self._stored_metrics[(record.topic, envelope.event_type)] = self._children(
                record.topic, envelope
            )
        if children.transport is not None:
            children.transport.observe((stored_at - envelope.occurred_at).total_seconds())
        children.consumed.inc()
        return children

    def _children(self, topic: str, envelope: Envelope) -> _StoredMetrics:
        service, event_type = self.config.service, envelope.event_type
        handoff = self._handoff_to_us(envelope)
        return _StoredMetrics(
            consumed=metrics.EVENTS_CONSUMED.labels(service, topic, event_type, "processed"),
            processing=metrics.PROCESSING_SECONDS.labels(service, event_type),
            transport=None
            if handoff is None
            else metrics.HANDOFF_TRANSPORT_LATENCY.labels(
                handoff.name, handoff.from_department, handoff.to_department
            ),
        )

    async def _finish(self, ready: _Ready) -> Outcome:
        """One classified record stored on its own (the path :meth:`handle_record` takes)."""
        started = time.perf_counter()
        record, envelope = ready.record, ready.envelope
        try:
            outcome = await self._store_effect(record, ready.handler, ready.event, envelope)
        except Exception as exc:
            if self._stopping.is_set():
                raise
            where = f"{record.topic}[{record.partition}]@{record.offset}"
            log.exception("cannot handle %s from %s", envelope.event_type, where)
            detail = short(f"{type(exc).__name__}: {exc}")
            return await self._dead_letter(record, envelope.event_type, HANDLER_ERROR, detail)
        metrics.PROCESSING_SECONDS.labels(self.config.service, envelope.event_type).observe(
            time.perf_counter() - started
        )
        return outcome

    async def handle_record(self, record: ConsumerRecord[Any, Any]) -> Outcome:
        """Process one record to a final outcome; only returns once that outcome is durable.

        Whatever raises while reading the record (decoding, classification,
        validation, the handler) dead-letters this one record with a reason; only
        a stop request escapes (transient errors are retried, never skipped).
        """
        started = time.perf_counter()
        event_type = _header(record, "event_type") or "unknown"
        reason = UNREADABLE  # until the record is classified: then the handler's fault
        try:
            raw = record.value if isinstance(record.value, bytes) else None
            verdict = classify(raw, topic=record.topic, cache_strings=CACHE_STRINGS)
            if isinstance(verdict, Rejected):
                return await self._dead_letter(
                    record, verdict.event_type or event_type, verdict.reason, verdict.error
                )
            envelope, event = verdict.envelope, verdict.event
            event_type, reason = envelope.event_type, HANDLER_ERROR
            handler = self.handlers.get(envelope.event_type)
            if handler is None:
                metrics.EVENTS_CONSUMED.labels(self.config.service, record.topic, event_type, "ignored").inc()
                return Outcome("ignored")
            outcome = await self._store_effect(record, handler, event, envelope)
        except Exception as exc:
            if self._stopping.is_set():
                raise
            where = f"{record.topic}[{record.partition}]@{record.offset}"
            log.exception("cannot handle %s from %s", event_type, where)
            return await self._dead_letter(record, event_type, reason, short(f"{type(exc).__name__}: {exc}"))
        elapsed = time.perf_counter() - started
        metrics.PROCESSING_SECONDS.labels(self.config.service, event_type).observe(elapsed)
        return outcome

    async def _skip_duplicate(
        self, record: ConsumerRecord[Any, Any], envelope: Envelope, receiving: bool
    ) -> Outcome:
        """An event already in the ledger: no second effect; a re-sent handoff's receipt is
        published again (its sender still waits for it).

        Confirming the receipt reads and writes the database: a transient error there (a
        ``mongod`` restart) is retried like the effect's own store, never turned into a dead
        letter of the duplicate (``make chaos`` saw one).
        """
        backoff = 0.1
        while receiving:
            try:
                await receipts.confirm_again(self.store, envelope)
                break
            except Exception as exc:
                if not _is_transient(exc) or self._stopping.is_set():
                    raise
                log.warning(
                    "transient error confirming the receipt of %s (%s); retrying in %.1f s",
                    envelope.event_id,
                    exc,
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.config.retry_max_seconds)
        metrics.EVENTS_CONSUMED.labels(
            self.config.service, record.topic, envelope.event_type, "duplicate"
        ).inc()
        log.info("duplicate event %s skipped", envelope.event_id)
        return Outcome("duplicate")

    async def _store_effect(
        self, record: ConsumerRecord[Any, Any], handler: Handler, event: Event, envelope: Envelope
    ) -> Outcome:
        """One record's ledger entry, effect and receipt in one transaction (retried while the
        errors are transient); a duplicate or a dead letter is the record's outcome instead.
        A consumer whose handlers make one write each stores it without one (``one_write_alone``)."""
        stored_at: list[datetime] = []

        journeys: dict[str, tracing.Carrier | None] = {}

        async def work(tx: Tx) -> None:
            stored_at.clear()
            ready = _Ready(record, handler, event, envelope)
            tx.batch = batch = Batch([(event, envelope)])  # a batch of one (crm_platform.batch)
            # Its receipt and events share one outbox row, as a group's do (a lone handoff's
            # receipt and assignment: one insert, relay mark and audit mark instead of two).
            tx.batch_emits = True
            tx.row_key = ObjectId()  # its receipt's row, named by its ledger entry
            if self._ledgered(envelope):
                await tx.db[PROCESSED].insert_one(self._ledger_entry(ready, tx.row_key), session=tx.session)
                batch.begun = commands_may_overlap(tx.session)  # reads side by side (Batch.preload)
            at, journeys[envelope.correlation_id] = await _settling(batch, self._run_handler(tx, ready))
            stored_at.append(at)

        not_stored = await self._store_retrying(record, envelope, work)
        if not_stored is not None:
            return not_stored
        await tracing.remember_journeys(self.store.db, journeys)
        self._observe_stored(record, envelope, stored_at[-1])
        await self._after_store(envelope)
        return Outcome("processed")

    async def _store_retrying(
        self, record: ConsumerRecord[Any, Any], envelope: Envelope, work: Callable[[Tx], Awaitable[None]]
    ) -> Outcome | None:
        """Run ``work`` in a transaction (:meth:`_stored`) until it commits (None), retrying
        transient errors with backoff, or return the outcome that replaces it: ``duplicate`` (the
        id is in the ledger) or a dead letter (the handler's :class:`DeadLetter`, or any other
        failure). A stop request raises. The event's correlation and causation are set throughout."""
        c_token = correlation_id_var.set(envelope.correlation_id)
        e_token = causation_var.set(envelope)
        backoff = 0.1
        key_backoff = 0.02  # woken at once when this process stores a key (shredding)
        key_deadline = time.monotonic() + self.config.key_wait_seconds
        try:
            while True:
                try:
                    await self._stored(work)
                    return None
                except PersonKeyPending as exc:
                    # The key topic is read by a consumer of its own: the key arrives meanwhile.
                    metrics.PERSON_KEY_WAITS.labels(self.config.service, record.topic).inc()
                    if time.monotonic() >= key_deadline:
                        reason = "person_key_missing"
                        return await self._dead_letter(record, envelope.event_type, reason, str(exc))
                    await until_key_stored(key_backoff)
                    key_backoff = min(key_backoff * 2, 2.0)
                except DuplicateKeyError as exc:
                    if _is_ledger_duplicate(exc):
                        return await self._skip_duplicate(record, envelope, self._receives(envelope))
                    return await self._dead_letter(record, envelope.event_type, "handler_error", _short(exc))
                except DeadLetter as exc:
                    return await self._dead_letter(record, envelope.event_type, exc.reason, str(exc))
                except Exception as exc:
                    if self._stopping.is_set():
                        raise
                    if not _is_transient(exc):
                        log.exception("handler failed for %s", envelope.event_type)
                        return await self._dead_letter(
                            record, envelope.event_type, "handler_error", f"{type(exc).__name__}: {exc}"
                        )
                    log.warning(
                        "transient error storing %s (%s); retrying in %.1f s", envelope.event_id, exc, backoff
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self.config.retry_max_seconds)
        finally:
            correlation_id_var.reset(c_token)
            causation_var.reset(e_token)

    async def _stored(self, work: Callable[[Tx], Awaitable[None]]) -> None:
        """``work`` in a transaction, or, for a consumer whose handlers' writes are idempotent
        by themselves (``ConsumerConfig.one_write_alone``), without one (``Store.one_write``)."""
        if self.config.one_write_alone:
            await self.store.one_write(work)
        else:
            await self.store.transaction(work)

    async def _after_store(self, envelope: Envelope) -> None:
        """The effect is stored: a failing hook is logged, never turns it into a dead letter."""
        if self.after_store is None:
            return
        try:
            result = self.after_store(envelope)
            if result is not None:
                await result
        except Exception:
            log.exception("after-store hook failed for %s", envelope.event_id)

    async def _dead_letter(
        self, record: ConsumerRecord[Any, Any], event_type: str, reason: str, detail: str
    ) -> Outcome:
        headers = dead_letter_headers(
            record.headers,
            reason=reason,
            error=detail,
            consumer_group=self.config.group_id,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            failed_at=utcnow(),
        )
        backoff = 0.2
        while True:
            try:
                assert self.producer is not None
                await self.producer.send_and_wait(
                    self.dlq_topic, record.value, key=record.key, headers=headers
                )
                break
            except Exception as exc:
                if self._stopping.is_set():
                    raise
                log.warning("cannot write dead letter (%s); retrying in %.1f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.config.retry_max_seconds)
        log.error(
            "dead-lettered %s from %s[%d]@%d: %s: %s",
            event_type,
            record.topic,
            record.partition,
            record.offset,
            reason,
            detail,
            extra={"dlq_reason": reason, "event_type": event_type},
        )
        metrics.DEAD_LETTERED.labels(self.config.service, record.topic, reason).inc()
        metrics.EVENTS_CONSUMED.labels(self.config.service, record.topic, event_type, "dead_lettered").inc()
        return Outcome("dead_lettered", reason)


async def _settling(batch: Batch, handling: Awaitable[T]) -> T:
    """``handling``'s result once the loads it started beside each other are finished too
    (``Batch.settle``): none reaches the server after the transaction's commit or abort."""
    try:
        result = await handling
    except BaseException:
        await batch.settle(failed=True)
        raise
    await batch.settle()
    return result


def _ledger_doc(ready: _Ready) -> dict[str, Any]:
    """The processed-events ledger entry: the event id is the key, a repeat fails the insert."""
    return {
        "_id": ready.event_id,
        "event_type": ready.envelope.event_type,
        "topic": ready.record.topic,
        "partition": ready.record.partition,
        "offset": ready.record.offset,
        "processed_at": utcnow(),
    }


def _tp_order(tp: TopicPartition) -> tuple[str, int]:
    return (tp.topic, tp.partition)


def _header(record: ConsumerRecord[Any, Any], name: str) -> str | None:
    for key, value in record.headers or ():
        if key == name and isinstance(value, bytes | bytearray):
            return bytes(value).decode(errors="replace")
    return None


def _is_ledger_duplicate(exc: DuplicateKeyError) -> bool:
    details = exc.details or {}
    return PROCESSED in str(details.get("errmsg", "")) or PROCESSED in str(exc)


def _short(exc: BaseException) -> str:
    return short(str(exc))
