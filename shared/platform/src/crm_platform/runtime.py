"""Everything a service runs besides its HTTP routes, started and stopped together.

A service's ``bootstrap`` builds one :class:`ServiceRuntime` with its handlers;
the app factory starts it in the FastAPI lifespan.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from crm_contracts.events.governance import ErasureRequestedV1, PermissionsChangedV1
from crm_contracts.topics import GATEWAY_ERASURE_REQUESTS, GATEWAY_PERMISSIONS, HANDOFF_RECEIPTS
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import AutoReconnect, ServerSelectionTimeoutError

from crm_platform import erasure, metrics, outbox_audit, pseudonym, receipts, shredding
from crm_platform.consumer import AfterStore, ConsumerConfig, EventConsumer, Handler
from crm_platform.fetch_spill import spill_large_fetches
from crm_platform.kafka import (
    ensure_topics_async,
    make_producer,
    pace_empty_fetches,
    release_read_frames,
    spread_backlog_fetches,
)
from crm_platform.liveness import (
    ConsumerWatchdog,
    Fatal,
    PartitionTracker,
    WatchdogConfig,
    exit_process,
    guard_task,
    harden_aiokafka,
)
from crm_platform.mongo import Store, connect
from crm_platform.outbox import OutboxRelay
from crm_platform.outbox_audit import OutboxAudit
from crm_platform.permission_policy import PolicyCache, permissions_handler
from crm_platform.settings import ServiceSettings

log = logging.getLogger("crm.runtime")

IndexSetup = Callable[[AsyncDatabase[dict[str, Any]]], Awaitable[None]]


@dataclass
class Subscription:
    topics: list[str]
    handlers: dict[str, Handler]
    department: str | None = None
    after_store: AfterStore | None = None
    # Where this department's database holds people (crm_platform.erasure): with the erasure
    # requests' topic subscribed, the runtime erases and confirms them; nothing else to wire.
    erasure_targets: tuple[erasure.Target, ...] = ()
    # No one waits on these records within a second: the consumer is patient once idle
    # (crm_platform.consumer.ConsumerConfig.patient). Not for a department receiving handoffs.
    patient: bool = False
    # Event types handled without a processed-events ledger entry: handlers idempotent by their
    # own write, no handoff (crm_platform.consumer.ConsumerConfig.unledgered).
    unledgered: frozenset[str] = frozenset()


def _patch_aiokafka(idle_backoff_ms: int) -> None:
    """The process-wide aiokafka fixes: empty fetches paced, the backlog's fetches spread and
    large fetched partitions kept in a temporary file only against a broker that answers empty
    fetches at once and ignores fetch sizes (the embedded one: ``idle_backoff_ms`` > 0), the rest
    everywhere."""
    pace_empty_fetches(idle_backoff_ms)
    harden_aiokafka()
    release_read_frames()
    if idle_backoff_ms > 0:
        spread_backlog_fetches()
        spill_large_fetches()


@dataclass
class ServiceRuntime:
    settings: ServiceSettings
    subscription: Subscription | None = None
    indexes: IndexSetup | None = None
    background: list[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=list)
    # Called on stop after the runtime's own tasks ended, before the Mongo client closes.
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        s = self.settings
        pseudonym.configure(s.pseudonym_key.get_secret_value())
        _patch_aiokafka(s.consumer_idle_backoff_ms)
        self.client = connect(s.mongodb_uri, s.service_name, timeout_seconds=s.db_deadline_seconds)
        self.store = Store(self.client, s.database_name, s.service_name)
        # The role -> permission policy this service enforces (crm_platform.permission_policy).
        self.permissions = PolicyCache(self.store.db, s.config_cache_seconds)
        self.relay = OutboxRelay(
            self.store.db,
            bootstrap=s.kafka_bootstrap_servers,
            service=s.service_name,
            poll_seconds=s.outbox_poll_seconds,
            committed=self.store.committed_rows,
            compression=None if s.outbox_compression == "none" else s.outbox_compression,
        )
        self.relay.start_seconds = s.kafka_start_seconds
        self.store.on_commit(self.relay.rows_handed)  # its commits hand it their rows
        self.audit = self._build_audit()
        if self.audit is not None:
            self.audit.start_seconds = s.kafka_start_seconds
        self.consumer: EventConsumer | None = None
        self.watchdog: ConsumerWatchdog | None = None
        # What to do when the service finds itself broken (a stalled consumer that a
        # rejoin did not cure, a background task that ended): exit non-zero so it is
        # restarted. Tests replace it.
        self.on_fatal: Fatal = exit_process
        self._wire_erasure()
        if self.subscription is not None and s.consumer_enabled:
            self._build_consumer(self.subscription)
        # The per-person keys this department opens sealed events with (crm_platform.shredding).
        self.key_consumer: EventConsumer | None = None
        self.key_watchdog: ConsumerWatchdog | None = None
        if self.subscription is not None and s.consumer_enabled and shredding.key_topics(s.service_name):
            self.key_consumer = self._key_consumer()
        self.receipts: receipts.HandoffTracker | None = None
        self.receipts_watchdog: ConsumerWatchdog | None = None
        department = self.subscription.department if self.subscription is not None else None
        if department and s.handoff_receipts_enabled and s.consumer_enabled:
            self._build_receipts(department)
        self._tasks: list[asyncio.Task[None]] = []
        self._consumer_task: asyncio.Task[None] | None = None
        self._key_task: asyncio.Task[None] | None = None
        self._retired: set[asyncio.Task[None]] = set()  # cancelled on purpose (rejoin)
        self._jobs: list[asyncio.Task[None]] = []  # the background jobs: cancelled first on stop
        self._stopping = False
        self.broker_status = "not checked yet"
        self._stop_requested = asyncio.Event()  # wakes the timers in stop()

    def _build_audit(self) -> OutboxAudit | None:
        s = self.settings
        if s.outbox_audit_after_seconds <= 0:
            return None
        return OutboxAudit(
            self.store.db,
            bootstrap=s.kafka_bootstrap_servers,
            service=s.service_name,
            after_seconds=s.outbox_audit_after_seconds,
            interval_seconds=s.outbox_audit_seconds,
            wake_relay=self.relay.notify,
        )

    def _build_receipts(self, department: str) -> None:
        """Every department that receives handoffs sends some too: track them until their
        receipt comes back, re-send those that never do."""
        s = self.settings
        self.relay.receipt_grace = timedelta(seconds=s.handoff_resend_after_seconds)
        self.receipts = receipts.HandoffTracker(
            self.store, s, department=department, wake_relay=self.relay.notify
        )
        # The receipt listener is a consumer like the department's own: it must not
        # stop silently either (no receipts would re-send every handoff for nothing).
        self.receipts_watchdog = self._watchdog(
            self.receipts.group_id, [HANDOFF_RECEIPTS], self.receipts.partitions, self.receipts.rejoin
        )

    def _build_consumer(self, sub: Subscription) -> None:
        s = self.settings
        tracker = PartitionTracker(s.service_name)
        self.consumer = EventConsumer(
            ConsumerConfig(
                service=s.service_name,
                group_id=s.group_id,
                topics=sub.topics,
                bootstrap=s.kafka_bootstrap_servers,
                department=sub.department,
                group_instance_id=s.consumer_instance_id,
                listener=tracker,
                demo_clock=s.demo_clock,
                max_records=s.consumer_max_records,
                max_fetch_records=s.consumer_max_fetch_records,
                start_seconds=s.kafka_start_seconds,
                key_wait_seconds=s.person_key_wait_seconds,
                holds_keys=bool(shredding.key_topics(s.service_name)),
                patient=sub.patient,
                unledgered=sub.unledgered,
                commit_gather_seconds=s.consumer_commit_gather_seconds,
            ),
            self.store,
            self._with_policy(sub),
            after_store=sub.after_store,
        )
        self.watchdog = self._watchdog(s.group_id, sub.topics, tracker, self._rejoin_consumer)

    def _key_consumer(self) -> EventConsumer:
        """A consumer of its own for the key topics (group ``<group>.person-keys``): an event
        retried until its key arrives must not hold up the very records that bring the key.
        Watched like the department's own (a stalled key consumer rejoins, then exits)."""
        s = self.settings
        tracker = PartitionTracker(s.service_name)
        group, topics = shredding.key_group(s.group_id), list(shredding.key_topics(s.service_name))
        consumer = EventConsumer(
            ConsumerConfig(
                service=s.service_name,
                group_id=group,
                topics=topics,
                bootstrap=s.kafka_bootstrap_servers,
                start_seconds=s.kafka_start_seconds,
                group_instance_id=f"{s.consumer_instance_id}.person-keys" if s.consumer_instance_id else None,
                listener=tracker,
                ledger=False,  # its handlers are idempotent by their own writes (shredding.key_handlers)
                one_write_alone=True,  # a record alone: one upsert, no transaction (Store.one_write)
                # Keys come with the events sealed with them: while the department's consumer
                # finds nothing there is no key to fetch, and its first records end the pause.
                patient_until_records=True,
                commit_gather_seconds=s.consumer_commit_gather_seconds,
            ),
            self.store,
            shredding.key_handlers(),
            after_store=shredding.key_stored,  # wakes the events waiting for a key at once
            # ... and as soon as it is fetched: they open with it before it is stored
            on_classified=shredding.key_fetched,
        )
        self.key_watchdog = self._watchdog(group, topics, tracker, self._rejoin_key_consumer)
        return consumer

    def _with_policy(self, sub: Subscription) -> dict[str, Handler]:
        """A department subscribed to the permissions topic keeps the policy, one subscribed to the
        erasure requests erases its people (``sub.erasure_targets``) and confirms: nothing to wire."""
        handlers = dict(sub.handlers)
        if GATEWAY_PERMISSIONS in sub.topics:
            handlers.setdefault(PermissionsChangedV1.event_type, permissions_handler(self.permissions))
        if GATEWAY_ERASURE_REQUESTS in sub.topics:
            # A department with no people (no targets, no recheck loop) confirms at once.
            rechecks = self.erasure_rechecks if sub.erasure_targets else None
            handler = erasure.erasure_handler(sub.erasure_targets, rechecks)
            handlers.setdefault(ErasureRequestedV1.event_type, handler)
        # Sealed events reach the handlers opened: the plaintext version they were written for.
        return {event_type: shredding.unsealing(handler) for event_type, handler in handlers.items()}

    def _wire_erasure(self) -> None:
        """Where the department's people are (``Subscription.erasure_targets``): their hashes
        given to older documents at start, and each erasure request matched once more after
        every older transaction ended (the handler records it, the loop runs it:
        ``crm_platform.erasure.Rechecks``). Before the consumer: its handler takes the rechecks."""
        self.erasure_rechecks = erasure.Rechecks(delay=self.settings.erasure_recheck_seconds)
        self._erasure_targets = self.subscription.erasure_targets if self.subscription is not None else ()
        if self._erasure_targets:
            self.background.append(lambda: erasure.backfill_job(self.store.db, self._erasure_targets))
            self.background.append(self._erasure_recheck_loop)

    async def _erasure_recheck_loop(self) -> None:
        await erasure.recheck_loop(self.store, self._erasure_targets, self.erasure_rechecks)

    def _watchdog(
        self,
        group_id: str,
        topics: list[str],
        tracker: PartitionTracker,
        rejoin: Callable[[], Awaitable[None]],
    ) -> ConsumerWatchdog:
        s = self.settings
        return ConsumerWatchdog(
            WatchdogConfig(
                service=s.service_name,
                group_id=group_id,
                topics=topics,
                bootstrap=s.kafka_bootstrap_servers,
                stall_seconds=s.consumer_stall_seconds,
                interval_seconds=s.consumer_watchdog_seconds,
            ),
            tracker,
            rejoin=rejoin,
            on_fatal=lambda reason: self.on_fatal(reason),
            database_ok=self._database_ok,
        )

    @property
    def db(self) -> AsyncDatabase[dict[str, Any]]:
        return self.store.db

    async def start(self) -> None:
        await self.store.ensure_platform_indexes()
        await receipts.ensure_indexes(self.store.db)
        await outbox_audit.ensure_indexes(self.store.db)
        if self.indexes is not None:
            await self.indexes(self.store.db)
        await erasure.ensure_indexes(self.store.db, self._erasure_targets)
        if self._erasure_targets:  # before the consumer: its erasures say when their recheck is due
            await self.erasure_rechecks.resolve(self.store.db)
        await shredding.ensure_indexes(self.store.db)
        await self.permissions.refresh(required=True)
        if self.settings.provision_topics:
            try:
                await ensure_topics_async(
                    self.settings.kafka_bootstrap_servers, self.settings.topic_replication_factor
                )
            except Exception as exc:
                # Writes must keep working while the broker is away; the relay
                # and consumer retry on their own.
                log.warning("topic provisioning skipped, broker unreachable: %s", exc)
        self._stopping = False
        self._stop_requested.clear()
        self._guarded(self.relay.run(), "outbox-relay")
        self._tasks.append(
            asyncio.create_task(
                self.relay.track_backlog(self.settings.outbox_backlog_sample_seconds), name="outbox-backlog"
            )
        )
        self._tasks.append(asyncio.create_task(self.relay.watch_inserts(), name="outbox-watch"))
        self._tasks.append(asyncio.create_task(self._watch_broker(), name="broker-check"))
        if self.audit is not None:
            self._guarded(self.audit.run(), "outbox-audit")
        self._start_consumers()
        for job in [*self.background, self.permissions.run]:
            self._jobs.append(asyncio.create_task(job(), name=getattr(job, "__name__", "job")))
        log.info("runtime started", extra={"database": self.settings.database_name})

    def _start_consumers(self) -> None:
        if self.consumer is not None:
            self._consumer_task = self._guarded(self.consumer.run(), "consumer")
        if self.key_consumer is not None:
            self._key_task = self._guarded(self.key_consumer.run(), "person-keys-consumer")
        if self.key_watchdog is not None:
            self._guarded(self.key_watchdog.run(), "person-keys-watchdog")
        if self.watchdog is not None:
            self._guarded(self.watchdog.run(), "consumer-watchdog")
        if self.receipts is not None:
            self._guarded(self.receipts.run(), "handoff-receipts")
        if self.receipts_watchdog is not None:
            self._guarded(self.receipts_watchdog.run(), "handoff-receipts-watchdog")

    def _guarded(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """A background task whose unexpected end makes the service exit (``on_fatal``)."""
        task = asyncio.create_task(work, name=name)
        self._tasks.append(task)
        guard_task(
            task,
            stopping=lambda: self._stopping or task in self._retired,
            on_fatal=lambda reason: self.on_fatal(reason),
        )
        return task

    async def _rejoin_consumer(self) -> None:
        """Drop the consumer's task and Kafka clients, then start it afresh (a new group member)."""
        assert self.consumer is not None
        self._consumer_task = await self._restart(self.consumer, self._consumer_task, "consumer")

    async def _rejoin_key_consumer(self) -> None:
        """The same for the key topics' consumer (crm_platform.shredding)."""
        assert self.key_consumer is not None
        self._key_task = await self._restart(self.key_consumer, self._key_task, "person-keys-consumer")

    async def _restart(
        self, consumer: EventConsumer, old: asyncio.Task[None] | None, name: str
    ) -> asyncio.Task[None] | None:
        """Cancel ``old`` (the consumer's task), drop its Kafka clients, run it again (unless
        stopping). Bounded throughout: a client stuck on a broker that went away must not
        hold the watchdog too."""
        if old is not None:
            self._retired.add(old)
            old.cancel()
            await asyncio.wait([old], timeout=10)
            if old in self._tasks:
                self._tasks.remove(old)
        try:
            await asyncio.wait_for(consumer.reset(), timeout=10)
        except (TimeoutError, Exception) as exc:
            log.warning("closing the stalled consumer's clients failed: %s", exc)
        return None if self._stopping else self._guarded(consumer.run(), name)

    async def _database_ok(self) -> bool:
        try:
            await asyncio.wait_for(self.client.admin.command("ping"), timeout=2)
            return True
        except Exception:
            return False

    async def stop(self) -> None:
        self._stopping = True
        self._stop_requested.set()
        await _cancel_all(self._jobs)  # periodic jobs (e.g. escalations) loop until cancelled
        self._jobs.clear()
        await self.relay.stop()
        if self.audit is not None:
            await self.audit.stop()
        if self.watchdog is not None:
            await self.watchdog.stop()
        if self.consumer is not None:
            await self.consumer.stop()
        if self.key_watchdog is not None:
            await self.key_watchdog.stop()
        if self.key_consumer is not None:
            await self.key_consumer.stop()
        if self.receipts_watchdog is not None:
            await self.receipts_watchdog.stop()
        if self.receipts is not None:
            await self.receipts.stop()
        pending: set[asyncio.Task[None]] = set()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=10)
        await _cancel_all(pending)
        self._tasks.clear()
        for hook in self.on_stop:
            await hook()
        await self.client.close()
        log.info("runtime stopped")

    async def check_ready(self) -> dict[str, str]:
        """What /readyz gates on: what the API needs, its database ('ok' or why not).

        Not the broker: writes go to the outbox while it is away, so a broker outage
        must not take every replica out of its Service. The broker's state is
        ``broker_status`` (in the /readyz body) and ``crm_broker_reachable``.
        """
        reason = ""
        for _ in range(2):
            try:
                await asyncio.wait_for(self.client.admin.command("ping"), timeout=2)
                return {"mongodb": "ok"}
            except ServerSelectionTimeoutError as exc:  # no server: asking again will not help
                reason = type(exc).__name__
                break
            except AutoReconnect as exc:
                # A pooled connection closed under the ping (the pool was reset after
                # another operation's network error): ask once more on a fresh one.
                reason = type(exc).__name__
            except Exception as exc:
                reason = type(exc).__name__
                break
        return {"mongodb": f"unreachable: {reason}"}

    async def _watch_broker(self) -> None:
        """Check the broker every ``broker_check_seconds``; export the result as a gauge."""
        gauge = metrics.BROKER_REACHABLE.labels(self.settings.service_name)
        while not self._stopping:
            self.broker_status = await self._check_kafka()
            gauge.set(1 if self.broker_status == "ok" else 0)
            if self.broker_status != "ok":
                log.warning("broker check failed: %s", self.broker_status)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_requested.wait(), self.settings.broker_check_seconds)

    async def _check_kafka(self) -> str:
        producer = self.relay.producer
        try:
            if producer is not None and self.relay.connected:
                await asyncio.wait_for(producer.client.fetch_all_metadata(), timeout=2)
                return "ok"
            probe = make_producer(self.settings.kafka_bootstrap_servers, "readiness-probe")
            try:
                await asyncio.wait_for(probe.start(), timeout=3)
                return "ok"
            finally:
                await probe.stop()
        except Exception as exc:
            return f"unreachable: {type(exc).__name__}"


@dataclass
class MongoOnlyRuntime:
    """The runtime of a process that only uses its MongoDB database (the analytics read API, the
    gateway): the client, the indexes, background jobs and ``on_stop`` hooks; no outbox relay, no
    consumer, no Kafka, so ``/readyz`` depends on MongoDB alone."""

    settings: ServiceSettings
    indexes: IndexSetup | None = None
    background: list[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=list)
    # Called on stop after the jobs ended, before the Mongo client closes (other clients).
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        s = self.settings
        pseudonym.configure(s.pseudonym_key.get_secret_value())
        self.client = connect(s.mongodb_uri, s.service_name, timeout_seconds=s.db_deadline_seconds)
        self.store = Store(self.client, s.database_name, s.service_name)
        # The policy as stored in this database (the analytics worker keeps it for its API).
        self.permissions = PolicyCache(self.store.db, s.config_cache_seconds)
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def db(self) -> AsyncDatabase[dict[str, Any]]:
        return self.store.db

    async def start(self) -> None:
        if self.indexes is not None:
            await self.indexes(self.store.db)
        with contextlib.suppress(Exception):  # not answering yet: the first request tries again
            await self.permissions.refresh()
        for job in [*self.background, self.permissions.run]:
            self._tasks.append(asyncio.create_task(job(), name=getattr(job, "__name__", "job")))
        log.info("runtime started (MongoDB only)", extra={"database": self.settings.database_name})

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # Bounded: a job that ignores its cancellation must not hold up the shutdown.
            _, stuck = await asyncio.wait(self._tasks, timeout=5)
            for task in stuck:
                log.warning("background job %s did not stop in 5 s", task.get_name())
        self._tasks.clear()
        for hook in self.on_stop:
            await hook()
        await self.client.close()
        log.info("runtime stopped")

    async def check_ready(self) -> dict[str, str]:
        try:
            await asyncio.wait_for(self.client.admin.command("ping"), timeout=2)
            return {"mongodb": "ok"}
        except Exception as exc:
            return {"mongodb": f"unreachable: {type(exc).__name__}"}


Runtime = ServiceRuntime | MongoOnlyRuntime


async def _cancel_all(tasks: Iterable[asyncio.Task[None]], *, rounds: int = 20) -> None:
    """Cancel the tasks and wait for each to end (whatever it raises on the way out).

    A task that swallowed its cancellation (one caught inside a client library while a job's
    loop carries on) is cancelled again, for at most ``rounds`` half-second rounds; one still
    running then is logged with where it is stuck and left behind: a stop (a pod's shutdown, a
    test's teardown) must never wait on it forever.
    """
    tasks = list(tasks)
    for _ in range(rounds):
        running = [task for task in tasks if not task.done()]
        if not running:
            break
        for task in running:
            task.cancel()
        await asyncio.wait(running, timeout=0.5)
    for task in tasks:
        if not task.done():
            where = io.StringIO()
            task.print_stack(file=where)
            log.error("task %s ignores cancellation; left behind:\n%s", task.get_name(), where.getvalue())
        elif not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" at exit
