"""The analytics stream worker: ``python -m analytics.worker``.

A faust-streaming app (id ``CRM_ANALYTICS_APP_ID``, default ``crm-analytics``; it is
also the consumer group) with one agent over every department's topics. The fold is
thin: it reads the raw bytes with the platform's dead-letter classification
(:func:`crm_platform.dead_letters.classify`, the one the departments' consumers use)
and hands the event to :func:`analytics.domain.engine.apply`. Whatever raises while
reading or folding one record sends that record to ``crm.dlq.analytics`` once, with
the original bytes and ``dlq_*`` headers, and the worker carries on.

What the consumer fetches from those topics is folded a fetch at a time
(:meth:`AnalyticsWorker.fold_batch`, ``analytics.batches``: faust's consumer hands the batch
over whole instead of one record at a time through its conductor and the agent's stream); the
agent folds what is put on its stream in process (``agent.test_context()``) the same way.
Events are folded in order; an event is acked only once the changelog writes of its fold are
stored, and those writes are made and awaited in batches (``analytics.changelog``: the tables
note changed keys and each flush writes every noted key once, one record batch per changelog
partition; ``analytics.confirm``: one flush and one broker round trip for every event folded
meanwhile, not one per event). Only a failure to store (the dead
letter or the changelog writes) stops the folding: a fetched batch's ends the worker (exit 1,
it starts again from the committed offsets); the agent's crashes its actor, which faust
restarts. Either way the records, never acked, come again. If actors keep crashing
(more than ``CRM_ANALYTICS_MAX_RESTARTS`` restarts within
``CRM_ANALYTICS_RESTART_WINDOW_SECONDS``) the worker stops and exits with status 1,
so its supervisor (``make run``, Kubernetes) restarts the process; faust's own
default would give up on the agent and leave a live process with frozen figures.

State lives in four faust tables (in-memory store, changelog topics
``<app id>-{leads,deals,receipts,records}-changelog``) holding *facts* keyed by lead id,
deal id, handoff event id and ``<kind>:<id>`` (the records the KPIs are computed from,
``analytics.domain.records``); a second timer computes the KPIs every
``CRM_ANALYTICS_KPI_SECONDS`` and writes them beside the snapshot. The figures are
derived from the facts in memory and rebuilt from the tables after each recovery. A
timer writes a snapshot of the figures to MongoDB about once a second, only when a figure changed. After each
recovery and every ``CRM_ANALYTICS_RECONCILE_SECONDS`` the facts are reconciled
against a replay of the log (``analytics.reconcile``): what a lossy broker took
from the changelog is put back and reported per figure.

Run ONE worker per app id: the funnel is a global figure and the tables are not
repartitioned, so two workers would each see half the partitions.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, cast

import faust
from aiokafka import TopicPartition
from crm_contracts import envelope_for, utcnow
from crm_contracts.events.governance import ErasureCompletedV1, ErasureRequestedV1, PermissionsChangedV1
from crm_contracts.topics import (
    ACCOUNT_SIGNAL,
    ACTION_ITEMS,
    COMMITMENT_REVIEWS,
    DEAL_WON,
    ERASURE_CONFIRMATIONS,
    GATEWAY_ERASURE_REQUESTS,
    GATEWAY_PERMISSIONS,
    HANDOFF_RECEIPTS,
    LEAD_QUALIFIED,
    LEAD_VERDICT,
    LEADS_ACTION_ITEM_UPDATES,
    LEADS_EVENTS,
    SALES_ACTION_ITEM_UPDATES,
    SALES_EVENTS,
    SERVICE_DESK_EVENTS,
    dead_letter_topic,
)
from crm_platform import tracing
from crm_platform.dead_letters import (
    HANDLER_ERROR,
    IMPLAUSIBLE_TIME,
    Accepted,
    Rejected,
    classify,
    dead_letter_headers,
)
from crm_platform.fetch_spill import spill_large_fetches
from crm_platform.heap import freeze_startup_heap
from crm_platform.kafka import (
    FETCH_ROUTINE_TIMEOUT_MS,
    ensure_topics,
    pace_empty_fetches,
    pace_fetches,
    pace_patiently,
)
from crm_platform.liveness import ConsumerWatchdog, PartitionTracker, WatchdogConfig, harden_aiokafka
from crm_platform.logging import configure_logging
from crm_platform.mongo import connect
from crm_platform.permission_policy import policy_of_event, store_if_newer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Transport as AiokafkaTransport
from faust.types import ConsumerT
from mode import OneForOneSupervisor, ServiceT
from pymongo import AsyncMongoClient

from analytics import handlers
from analytics.batches import BatchConsumer, BatchHandler
from analytics.changelog import ChangelogWriter, WriteBehindTable
from analytics.confirm import ChangelogConfirmer
from analytics.domain import kpis
from analytics.domain.engine import AnalyticsState, ImplausibleEvent, apply, forget_records, rebuild_figures
from analytics.domain.reads import triage
from analytics.domain.snapshot import Reconciliation, Snapshot
from analytics.reconcile import Reconciler, committed_offsets, log_report, reconcile
from analytics.settings import AnalyticsSettings
from analytics.store import MongoKpis, MongoReconciliations, MongoSnapshots
from analytics.worker_metrics import WorkerMetrics, serve_metrics, track_partitions

log = logging.getLogger("crm.analytics.worker")

SOURCE_TOPICS: tuple[str, ...] = (
    LEADS_EVENTS,
    LEAD_QUALIFIED,
    LEAD_VERDICT,
    SALES_EVENTS,
    DEAL_WON,
    SERVICE_DESK_EVENTS,
    ACCOUNT_SIGNAL,
    ACTION_ITEMS,
    SALES_ACTION_ITEM_UPDATES,
    LEADS_ACTION_ITEM_UPDATES,
    COMMITMENT_REVIEWS,
    HANDOFF_RECEIPTS,
    GATEWAY_PERMISSIONS,
    GATEWAY_ERASURE_REQUESTS,
)
# aiokafka's batch per changelog partition (faust's default is 16 KiB, about 40 facts).
CHANGELOG_BATCH_BYTES = 512 * 1024
CHANGELOG_LINGER_SECONDS = 0.01
CHANGELOG_COMPRESSION = "zstd"
# The erasure requests analytics confirmed (its database): one confirmation per request.
ERASURES = "erasures"
# Messages of a fetched batch folded between two yields to the event loop (and handed to the
# confirmer together).
FOLD_CHUNK = 500
# Records handed over per poll (faust's ``broker_max_poll_records``; its default, none, handed a
# replay's whole fetched backlog over at once: 300,000 events decoded together, the worker's
# 865 MB peak; docs/performance.md, fifteenth session, memory). Folded FOLD_CHUNK at a time anyway.
MAX_POLL_RECORDS = 10_000
# KPI ticks skipped in a row at most while the worker catches up (its last fetch came back full:
# a replay, a backlog): the KPIs are derived over every record, 6% of a replaying worker's CPU,
# and what they would publish is a moment of a log half read. Then one is published anyway.
KPI_TICKS_DEFERRED_AT_MOST = 5
DEPARTMENT = "analytics"


class AnalyticsApp(faust.App):
    """faust's app whose Kafka consumer hands fetched batches of some topics over whole
    (analytics.batches), once :meth:`deliver_batches` named them."""

    batch_delivery: tuple[tuple[str, ...], BatchHandler, Callable[[], Awaitable[None]]] | None = None

    def deliver_batches(
        self, topics: tuple[str, ...], handler: BatchHandler, settled: Callable[[], Awaitable[None]]
    ) -> None:
        self.batch_delivery = (topics, handler, settled)

    def _new_consumer(self) -> ConsumerT:
        transport = self.transport
        if self.batch_delivery is None or not isinstance(transport, AiokafkaTransport):
            return super()._new_consumer()
        consumer = BatchConsumer(
            transport,
            callback=self.topics.on_message,
            on_partitions_revoked=self._on_partitions_revoked,
            on_partitions_assigned=self._on_partitions_assigned,
            beacon=self.beacon,
            loop=transport.loop,
        )
        consumer.deliver_batches(*self.batch_delivery)
        return consumer


def build_faust_app(settings: AnalyticsSettings) -> faust.App:
    web_port = settings.worker_web_port
    # faust creates only the last level of its data directory itself.
    settings.faust_datadir.parent.mkdir(parents=True, exist_ok=True)
    return AnalyticsApp(
        settings.app_id,
        broker=settings.faust_broker,
        broker_credentials=settings.faust_credentials,
        store="memory://",
        autodiscover=False,
        datadir=str(settings.faust_datadir),
        web_enabled=web_port is not None,
        web_port=web_port or 6066,
        web_host=settings.http_host,
        topic_partitions=settings.table_partitions,
        topic_replication_factor=settings.topic_replication_factor or 1,
        topic_disable_leader=True,  # no on_leader timers: no leader-election topic
        consumer_auto_offset_reset="earliest",
        broker_max_poll_records=MAX_POLL_RECORDS,
        # Static membership (CRM_CONSUMER_INSTANCE_ID): a restarted worker takes its
        # partitions back at once instead of waiting for its old self to be evicted.
        consumer_group_instance_id=settings.consumer_instance_id,
        key_serializer="raw",
        value_serializer="raw",
        # A flush's record batch per changelog partition (analytics.changelog) holds this
        # much before another is started (which waits for the previous one to drain).
        producer_max_batch_size=CHANGELOG_BATCH_BYTES,
        # ... and sent a few milliseconds late, so that one produce request carries the
        # writes of many folds (a request per small batch cost a fifth of the worker's CPU
        # in socket writes); the confirmer waits for them anyway.
        producer_linger=CHANGELOG_LINGER_SECONDS,
        # The changelog's batches (and the worker's dead letters and confirmations) in zstd, as
        # the outbox relays send theirs: a fold's facts and record are JSON that packs several
        # to one, and the embedded broker's CPU follows the bytes it keeps (uncompressed, the
        # two changelogs held 330 bytes per folded lead, more than the lead's own event).
        producer_compression_type=CHANGELOG_COMPRESSION,
    )


EXIT_CRASH_LOOP = 1
Stop = Callable[[BaseException | None], None]  # how a crash-looping worker stops (give_up)


def stop_the_process(reason: BaseException | None) -> None:
    """How a crash-looping worker stops in production (:meth:`AnalyticsWorker.give_up`): SIGTERM
    to its own process; faust's worker stops gracefully on it, and main() exits with
    ``EXIT_CRASH_LOOP``. A test passes another stop (the analytics tests' conftest records the
    reason and fails the test): a SIGTERM would end the whole pytest run with no report."""
    os.kill(os.getpid(), signal.SIGTERM)


def crash_loop_supervisor(
    max_restarts: int, window_seconds: float, give_up: Callable[[BaseException | None], None]
) -> type[OneForOneSupervisor]:
    """faust's one-for-one actor supervisor, with our bound and our way of giving up.

    faust builds it with 100 restarts a second and, past that, raises ``SystemExit``
    inside a background task, which leaves the process alive with a dead agent.
    """

    class ExitOnCrashLoop(OneForOneSupervisor):
        def __init__(self, *services: ServiceT, **kwargs: Any) -> None:
            # mode's token bucket holds ``over`` tokens and refills ``max_restarts`` a
            # second: ``max_restarts`` restarts in a burst, ``max_restarts`` per window
            # sustained.
            kwargs.update(max_restarts=max_restarts / window_seconds, over=float(max_restarts))
            super().__init__(*services, **kwargs)

        async def restart_service(self, service: ServiceT) -> None:
            try:
                await super().restart_service(service)
            except SystemExit:  # raised by mode once the restart budget is spent
                give_up(service.crash_reason)

    return ExitOnCrashLoop


class AnalyticsWorker:
    """The faust app with its tables, agent and snapshot timer, built from settings."""

    def __init__(
        self, settings: AnalyticsSettings, app: faust.App | None = None, stop: Stop | None = None
    ) -> None:
        """Declare the faust app's pieces in the order faust needs them: tables, topics, the
        agent, the timers, the shutdown hook. ``stop``: how :meth:`give_up` stops the worker
        (None: :func:`stop_the_process`, looked up when it gives up)."""
        self.settings = settings
        self._stop = stop
        self.app = app if app is not None else build_faust_app(settings)
        self.tables = self._declare_tables()
        self.state = AnalyticsState(
            leads=self.tables["leads"],
            deals=self.tables["deals"],
            receipts=self.tables["receipts"],
            records=self.tables["records"],
        )
        self.changelog = ChangelogWriter(self.app, self.tables.values())
        self.source = self._raw_topic(*SOURCE_TOPICS)
        self.dlq_topic_name = dead_letter_topic(settings.service_name)
        self.dlq = self._raw_topic(self.dlq_topic_name)
        self.confirmations = self._raw_topic(ERASURE_CONFIRMATIONS)
        self.agent = self._declare_agent()
        # The agent's topics, fetched from Kafka, are folded a fetched batch at a time
        # (fold_batch); the agent's stream serves only what is put on it in process.
        self._batch_confirmer: ChangelogConfirmer[Any] | None = None
        if isinstance(self.app, AnalyticsApp):
            self.app.deliver_batches(SOURCE_TOPICS, self.fold_batch, self._batches_settled)
        self.app.timer(settings.snapshot_interval_seconds, name="analytics-snapshot")(self.snapshot_tick)
        self.app.timer(settings.kpi_interval_seconds, name="analytics-kpis")(self.kpi_tick)
        # Replays the log against the facts after each recovery and every interval.
        self.reconciler = Reconciler(interval_seconds=settings.reconcile_interval_seconds, run=self.reconcile)
        self.app.timer(1.0, name="analytics-reconcile")(self.reconcile_tick)
        if "record" in settings.retention_days:  # retention (CRM_RETENTION_DAYS, issue 9)
            self.app.timer(settings.retention_every_seconds, name="analytics-retention")(self.retention_tick)
        self._recoveries = 0
        self._kpi_inputs = kpis.DerivedCache()
        self.catching_up = False  # the last fetched batch was full (fold_batch)
        self._batches_since_kpis = 0  # fetched batches folded since the last KPI tick
        self._kpi_deferred = 0
        self.app.on_before_shutdown.connect(self._on_before_shutdown)
        self.recovered = False
        self._needs_rebuild = False
        self._written: Snapshot | None = None  # the last snapshot this worker wrote
        self._mongo: AsyncMongoClient[dict[str, Any]] | None = None
        self.dead_lettered = 0
        self.metrics = WorkerMetrics(f"{settings.service_name}-worker")
        serve_metrics(self.app)
        self.crash_looping = False

    def _declare_tables(self) -> dict[str, WriteBehindTable]:
        tables = {
            name: WriteBehindTable(
                self.app,
                name=name,
                beacon=self.app.tables.beacon,
                default=None,
                partitions=self.settings.table_partitions,
                # Changelog partition by the table key: a key written from several
                # source topics keeps its writes in one ordered changelog partition.
                use_partitioner=True,
                on_recover=self._on_recover,
                help=f"analytics facts: {name}",
            )
            for name in ("leads", "deals", "receipts", "records")
        }
        for table in tables.values():
            self.app.tables.add(table)
        return tables

    def _raw_topic(self, *names: str) -> faust.TopicT:
        """Topics read and written as raw bytes: ``handle`` decodes and classifies them itself."""
        return self.app.topic(
            *names, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
        )

    def _declare_agent(self) -> faust.types.AgentT[Any]:
        # ONE actor folds the stream in order; a ChangelogConfirmer acks the folded events
        # once their changelog writes are stored, many events per wait (analytics.confirm).
        settings = self.settings
        return self.app.agent(
            self.source,
            name="analytics-events",
            concurrency=1,
            supervisor_strategy=crash_loop_supervisor(
                settings.max_restarts, settings.restart_window_seconds, self.give_up
            ),
        )(self._process)

    # -- the agent ---------------------------------------------------------------
    async def _process(self, stream: Any) -> None:
        manual = stream.noack()  # acked by the confirmer, once the event's facts are stored
        # The confirmer flushes the tables' changelog (analytics.changelog) each time it takes
        # a batch: once per changed key for every event folded since the previous batch.
        confirmer: ChangelogConfirmer[Any] = ChangelogConfirmer(
            manual.ack, max_pending=self.settings.confirm_batch_max, flush=self.changelog.flush
        )
        confirmer.start()
        try:
            async for event in manual.events():
                await self.take(event.message)
                await confirmer.add(event, ())
        finally:
            await confirmer.stop()

    async def fold_batch(self, records: Sequence[Any], generation: int) -> int:
        """A fetched batch of the source topics (analytics.batches: aiokafka's records, fetched
        in consumer ``generation``): each record taken (:meth:`take`) in order, handed to the
        batch confirmer a chunk at a time, acked once its changelog writes are stored. Stops at
        the first record met with the consumer's flow stopped or its generation changed (a
        rebalance: faust fetches the rest again); returns how many it took. A failed store ends
        the worker (:meth:`give_up`): it starts again from the committed offsets, so what was
        not confirmed comes again."""
        taken = 0
        self.catching_up = len(records) >= MAX_POLL_RECORDS
        self._batches_since_kpis += 1
        try:
            confirmer = self._confirmer_for_batches()
            while taken < len(records):
                chunk = await self._take_chunk(records[taken : taken + FOLD_CHUNK], generation)
                taken += len(chunk)
                await confirmer.add_many(chunk)
                if len(chunk) < FOLD_CHUNK:
                    break
                await asyncio.sleep(0)  # the timers, the metrics page, the confirmer
        except Exception as exc:  # noqa: BLE001 - a failed store: the worker starts again
            self.give_up(exc)
        return taken

    async def _take_chunk(self, records: Sequence[Any], generation: int) -> Sequence[Any]:
        """Take records in order while the consumer's flow runs in ``generation``; the chunk's
        consumed counts go to the metrics together (one increment per outcome, not per record)."""
        consumer, app = cast(Any, self.app.consumer), self.app
        counts: dict[tuple[str, str, str], int] = {}
        taken = 0
        # The chunk's clock for the plausible-time check and whether tracing is on, read once (0.4
        # and 0.5 us a record): a chunk is folded within milliseconds (its window is minutes wide).
        now, traced = utcnow(), tracing.enabled()
        try:
            for record in records:
                if not consumer.flow_active or app.consumer_generation_id != generation:
                    break
                done = self._take_at_once(record, now, traced)  # nearly every record: no coroutine
                outcome: tuple[str, str, str] | None
                if isinstance(done, tuple):
                    outcome = done
                else:  # a dead letter, a policy, an erasure: awaited, so the clock is read again
                    outcome = await self._take_rest(record, done)
                    now = utcnow()
                taken += 1
                if outcome is not None:
                    counts[outcome] = counts.get(outcome, 0) + 1
        finally:
            self.metrics.consumed_many(counts)
        return records if taken == len(records) else records[:taken]

    def _confirmer_for_batches(self) -> ChangelogConfirmer[Any]:
        if self._batch_confirmer is None:
            consumer = cast(BatchConsumer, self.app.consumer)

            async def ack_all(records: Sequence[Any]) -> None:
                consumer.ack_records(records)

            self._batch_confirmer = ChangelogConfirmer(
                None, max_pending=self.settings.confirm_batch_max, flush=self.changelog.flush, ack_all=ack_all
            )
            self._batch_confirmer.start()
        return self._batch_confirmer

    async def _batches_settled(self) -> None:
        """Whatever the batch path took is acked, or never will be (the confirmer stopped or
        failed): what faust's consumer waits for on a rebalance and on stopping."""
        if self._batch_confirmer is not None:
            await self._batch_confirmer.settled()

    async def handle(self, message: Any) -> None:
        """One Kafka message, alone: :meth:`take`, then wait for its changelog writes."""
        await self.take(message)
        await self.changelog.flush()

    async def take(self, message: Any) -> None:
        """One Kafka message: fold it into the state, or dead-letter it once with the reason.

        The fold's table changes reach the changelog with the next flush (analytics.changelog);
        the event may be acked (and its offset committed) only once that flush is stored; a
        failure crashes the actor, and the event, never acked, is delivered again (its facts are
        rewritten, idempotently). With tracing on, the fold is a CONSUMER span continuing the
        event's trace (the context its producer put in the record's headers:
        crm_platform.tracing). A dead letter another group asked to replay (``crm-ops replay``)
        is skipped.
        """
        outcome = await self._take(message)
        if outcome is not None:
            self.metrics.consumed(*outcome)

    async def _take(self, message: Any) -> tuple[str, str, str] | None:
        """:meth:`take` without counting: the (topic, event type, outcome) to count, or None
        when it was counted already (a dead letter)."""
        now = self._take_at_once(message)
        return now if isinstance(now, tuple) else await self._take_rest(message, now)

    def _take_at_once(
        self, message: Any, now: datetime | None = None, traced: bool = True
    ) -> tuple[str, str, str] | Accepted | Rejected:
        """:meth:`_take` as far as it goes without awaiting anything: the outcome to count for a
        record skipped unread (:func:`triage`) or folded with nothing more to do (nearly every
        record), else its verdict, which :meth:`_take_rest` finishes (a dead letter to send, a
        permission policy or an erasure to act on). A fetched batch's chunk calls it directly:
        no coroutine made and awaited per record (docs/performance.md, twentieth session), with
        its clock (``now``, :meth:`fold`) and ``traced`` False when tracing is off (no span)."""
        skipped = triage(message.headers, self.settings.app_id)
        if skipped is not None:
            return (message.topic, *skipped)  # a replay for another group, or a type not read
        if traced:
            with tracing.consuming(message.headers, topic=message.topic, group=self.settings.app_id):
                verdict = self.fold(message, now)
        else:
            verdict = self.fold(message, now)
        if isinstance(verdict, Accepted) and not _acts_on(verdict.event):
            return (message.topic, verdict.envelope.event_type, "processed")
        return verdict

    async def _take_rest(self, message: Any, verdict: Accepted | Rejected) -> tuple[str, str, str] | None:
        """What :meth:`_take_at_once` left: the dead letter (None: counted with it), or the event's
        policy and erasure steps, then its outcome."""
        if isinstance(verdict, Rejected):
            await self.dead_letter(message, verdict.reason, verdict.error, verdict.event_type)
            return None
        await self._keep_policy(verdict.event)
        await self._confirm_erasure(verdict.event, verdict.envelope)
        return (message.topic, verdict.envelope.event_type, "processed")

    async def _keep_policy(self, event: Any) -> None:
        """The role -> permission policy, kept in analytics' database for its API to enforce
        (crm_platform.permission_policy); a failure propagates: the event is delivered again."""
        if isinstance(event, PermissionsChangedV1):
            await store_if_newer(self.mongo[self.settings.database_name], None, policy_of_event(event))

    async def _confirm_erasure(self, event: Any, envelope: Any) -> None:
        """Analytics keeps no personal data (facts keyed by record ids, and figures): it confirms
        an erasure request at once, once per request (noted in its database after the broker's
        ack; a crash in between sends a second copy, which the gateway's fold ignores). A failure
        propagates: the request is delivered again."""
        if not isinstance(event, ErasureRequestedV1):
            return
        done = self.mongo[self.settings.database_name][ERASURES]
        if await done.find_one({"_id": event.request_id}) is not None:
            return
        now = utcnow()
        waited = max(0, int((now - event.requested_at).total_seconds() * 1000))
        completed = ErasureCompletedV1(
            request_id=event.request_id,
            department=DEPARTMENT,
            records_erased=0,
            audit_entries_rewritten=0,
            duration_ms=waited,
            completed_at=now,
        )
        out = envelope_for(
            completed,
            source=DEPARTMENT,
            correlation_id=envelope.correlation_id,
            causation_id=str(envelope.event_id),
        )
        key = completed.partition_key().encode()
        await (await self.confirmations.send(key=key, value=out.to_bytes(), force=True))
        await done.update_one({"_id": event.request_id}, {"$set": {"confirmed_at": now}}, upsert=True)
        log.info("erasure request %s confirmed (analytics keeps no personal data)", event.request_id)

    def fold(self, message: Any, now: datetime | None = None) -> Accepted | Rejected:
        """Classify and apply one message; never raises (a raise would stop the partition).
        ``now``: the moment its times are judged plausible against (None: the clock's now)."""
        verdict: Accepted | Rejected = NOT_READ
        try:
            self._maybe_rebuild()
            # Values not shared through the parser's cache (CacheStrings): the facts share theirs.
            verdict = classify(message.value, topic=message.topic, now=now, cache_strings="keys")
            if isinstance(verdict, Accepted):
                apply(self.state, verdict.envelope, verdict.event)
                # The KPIs' walk is held only while the records stand still (peak RSS).
                self._kpi_inputs.release((self.state.records_version, self._recoveries))
            return verdict
        except ImplausibleEvent as exc:
            return Rejected(IMPLAUSIBLE_TIME, str(exc), _event_type(verdict))
        except Exception as exc:  # our bug: park the event, keep consuming
            log.error("cannot apply %s", _event_type(verdict) or "message", exc_info=exc)
            return Rejected(HANDLER_ERROR, f"{type(exc).__name__}: {exc}"[:1500], _event_type(verdict))

    def give_up(self, reason: BaseException | None) -> None:
        """Actors keep crashing: stop the worker so that main() exits non-zero."""
        if self.crash_looping:
            return
        self.crash_looping = True
        log.critical("analytics agent crash-looping (last: %r); stopping the worker", reason)
        (self._stop or stop_the_process)(reason)

    async def dead_letter(self, message: Any, reason: str, error: str, event_type: str | None = None) -> None:
        headers = dead_letter_headers(
            message.headers,
            reason=reason,
            error=error,
            consumer_group=self.settings.app_id,
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            failed_at=utcnow(),
        )
        # force=True: publish now and wait for the broker's ack, not when the source
        # offset is acked, so the dead letter is stored before the offset commit.
        delivery = await self.dlq.send(key=message.key, value=message.value, headers=headers, force=True)
        await delivery
        self.dead_lettered += 1
        self.metrics.consumed(message.topic, event_type, "dead_lettered")
        self.metrics.dead_lettered(message.topic, reason)
        log.error(
            "dead-lettered %s from %s[%d]@%d: %s: %s",
            event_type or "message",
            message.topic,
            message.partition,
            message.offset,
            reason,
            error[:300],
            extra={"dlq_reason": reason, "event_type": event_type},
        )

    # -- recovery ----------------------------------------------------------------
    async def _on_recover(self) -> None:
        # Called once per table after ALL tables are recovered: rebuild lazily, once.
        self._needs_rebuild = True
        self.recovered = True
        self._recoveries += 1
        self.reconciler.recovered()

    def _maybe_rebuild(self) -> None:
        if self._needs_rebuild:
            self._needs_rebuild = False
            rebuild_figures(self.state)
            log.info(
                "figures rebuilt from the tables",
                extra={
                    "leads": len(self.state.leads),
                    "deals": len(self.state.deals),
                    "receipts": len(self.state.receipts),
                },
            )

    # -- reconciliation (analytics.reconcile) --------------------------------------
    async def reconcile_tick(self) -> None:
        if self.recovered:
            await self.reconciler.tick()

    async def reconcile(self) -> Reconciliation | None:
        """Replay the log up to the committed offsets; merge, persist and report what was short."""
        self._maybe_rebuild()
        generation = self._recoveries
        bootstrap = self.settings.kafka_bootstrap_servers
        upto = await committed_offsets(bootstrap, self.settings.app_id, SOURCE_TOPICS)
        report = await reconcile(
            self.state, bootstrap, upto, may_merge=lambda: generation == self._recoveries
        )
        if report is None:
            return None  # the tables were recovered again meanwhile: the next run checks them
        # The repaired facts' changelog writes (with whatever the agent folded meanwhile).
        await self.changelog.flush()
        report.worker = self.settings.app_id
        reconciliations = MongoReconciliations(self.mongo[self.settings.database_name])
        await handlers.record_reconciliation(reconciliations, report)
        log_report(report)
        return report

    # -- snapshots -----------------------------------------------------------------
    @property
    def mongo(self) -> AsyncMongoClient[dict[str, Any]]:
        if self._mongo is None:
            self._mongo = connect(self.settings.mongodb_uri, f"{self.settings.service_name}-worker")
        return self._mongo

    async def snapshot_tick(self) -> bool:
        """Write the figures to MongoDB if they changed since the last write."""
        if not self.recovered:
            return False  # never overwrite a good snapshot with not-yet-recovered zeros
        self._maybe_rebuild()
        snapshots = MongoSnapshots(self.mongo[self.settings.database_name])
        try:
            written = await handlers.publish_snapshot(
                snapshots, self.state.figures, worker=self.settings.app_id, now=utcnow(), last=self._written
            )
        except Exception as exc:  # noqa: BLE001 - the timer retries; the agent must not stop
            log.warning("cannot write the analytics snapshot (will retry): %s", exc)
            return False
        if written is None:
            self.metrics.snapshot_current()
            return False
        self._written = written
        self.metrics.snapshot_current()
        return True

    async def retention_tick(self) -> int:
        """Retention: drop the records (the KPIs' facts) that last moved more than the configured
        ``record`` days ago, through the table's changelog (a tombstone per record), and keep
        older events from bringing them back. Returns how many were dropped."""
        days = self.settings.retention_days.get("record")
        if days is None or not self.recovered:
            return 0  # never judge a table still being recovered
        cutoff = utcnow().timestamp() - days * 86400
        dropped = forget_records(self.state, cutoff)
        await self.changelog.flush()  # the tombstones' changelog writes
        if dropped:
            log.info("retention: %d records older than %d days dropped", dropped, days)
        return dropped

    async def kpi_tick(self) -> bool:
        """Compute the KPIs from the records and write them (they move with time, so always);
        while the worker catches up (its last fetch came back full) at most every
        ``KPI_TICKS_DEFERRED_AT_MOST + 1`` ticks."""
        if not self.recovered:
            return False  # never publish not-yet-recovered emptiness over good figures
        # Catching up: the last fetch came back full and batches came since the last tick (a
        # log that ended on a full fetch is caught up at the next tick).
        busy, self._batches_since_kpis = self.catching_up and self._batches_since_kpis > 0, 0
        if busy and self._kpi_deferred < KPI_TICKS_DEFERRED_AT_MOST:
            self._kpi_deferred += 1  # the log's rest is being folded: publish once caught up
            return False
        self._kpi_deferred = 0
        try:
            # What the records alone give is kept while none changes (a recovery may change
            # them behind the version): an idle tick walks no record.
            derived = self._kpi_inputs.get(
                (self.state.records_version, self._recoveries), lambda: dict(self.state.records.items())
            )
            await handlers.publish_kpis(
                MongoKpis(self.mongo[self.settings.database_name]),
                derived,
                records_version=self.state.records_version,
                worker=self.settings.app_id,
                now=utcnow(),
            )
        except Exception as exc:  # noqa: BLE001 - the timer retries; the agent must not stop
            log.warning("cannot write the KPIs (will retry): %s", exc)
            return False
        return True

    async def _on_before_shutdown(self, sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        if self._batch_confirmer is not None:
            await self._batch_confirmer.stop()  # what it has not confirmed stays unacked
        try:
            await self.snapshot_tick()
        finally:
            if self._mongo is not None:
                await self._mongo.close()
                self._mongo = None


# A fold's verdict until the record is read (frozen, so one for all: not one built per record).
NOT_READ = Rejected(HANDLER_ERROR, "not read")
# The events whose take does more than the fold: the permission policy, the erasure confirmation.
ACTS_ON: tuple[type, ...] = (PermissionsChangedV1, ErasureRequestedV1)
_acts_on_class: dict[type, bool] = {}


def _acts_on(event: object) -> bool:
    """Whether ``event`` is one of :data:`ACTS_ON`, by one lookup per class (a pydantic
    ``isinstance`` miss is 60-100 ns, and two coroutines per event were awaited for nothing)."""
    cls = type(event)
    acts = _acts_on_class.get(cls)
    if acts is None:
        acts = _acts_on_class[cls] = issubclass(cls, ACTS_ON)
    return acts


def _event_type(verdict: Accepted | Rejected) -> str | None:
    return verdict.envelope.event_type if isinstance(verdict, Accepted) else verdict.event_type


def logging_config(settings: AnalyticsSettings) -> dict[str, Any]:
    """The platform's JSON log lines, for faust's own logging setup."""
    quiet = ("aiokafka", "kafka", "pymongo", "faust.transport", "mode")
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "json": {
                "()": "crm_platform.logging.JsonFormatter",
                "service": f"{settings.service_name}-worker",
            }
        },
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stdout",
            }
        },
        "root": {"level": settings.log_level.upper(), "handlers": ["default"]},
        "loggers": {name: {"level": "WARNING"} for name in quiet},
    }


def provision_topics(settings: AnalyticsSettings) -> None:
    """Create missing topics from the contracts' table before faust subscribes.

    Otherwise a broker that auto-creates topics would create the source topics on
    first metadata request with its default partition count, not the table's.
    """
    if not settings.provision_topics:
        return
    try:
        ensure_topics(settings.kafka_bootstrap_servers, replication_factor=settings.topic_replication_factor)
    except Exception as exc:  # noqa: BLE001 - the broker may be away: faust retries on its own
        log.warning("topic provisioning skipped: %s: %s", type(exc).__name__, exc)


def watch_progress(app: faust.App, settings: AnalyticsSettings) -> ConsumerWatchdog:
    """The platform's progress watchdog over the worker's group (``crm_platform.liveness``).

    faust's consumer cannot be rejoined from outside, so a stall of
    ``CRM_CONSUMER_STALL_SECONDS`` (lag, no committed progress) ends the process
    non-zero and its supervisor or Kubernetes starts a fresh one. faust's consumer is
    aiokafka's, so it also gets the fix for ``stop()`` hanging after a broker restart.
    """
    harden_aiokafka()
    tracker = PartitionTracker(f"{settings.service_name}-worker")
    track_partitions(app, tracker, SOURCE_TOPICS)
    watchdog = ConsumerWatchdog(
        WatchdogConfig(
            service=f"{settings.service_name}-worker",
            group_id=settings.app_id,
            topics=list(SOURCE_TOPICS),
            bootstrap=settings.kafka_bootstrap_servers,
            stall_seconds=settings.consumer_stall_seconds,
            interval_seconds=settings.consumer_watchdog_seconds,
        ),
        tracker,
        rejoin=None,
    )
    app.task(watchdog.run)
    return watchdog


def pace_consumers(settings: AnalyticsSettings) -> None:
    """The worker's fetch pacing (faust's consumer is aiokafka's too): several live events per
    fetch, not one, and, once idle, an empty fetch every half second on a broker that answers
    them at once, not ten a second (patient: the figures are written once a second; a fifth of
    the idle platform's fetch rounds were the worker's, docs/performance.md, eleventh session)."""
    pace_empty_fetches(settings.consumer_idle_backoff_ms)
    pace_fetches(settings.fetch_interval_ms)
    pace_patiently()
    quiet_fetch_routine()
    unset_positions_not_verified()
    if settings.consumer_idle_backoff_ms > 0:  # the embedded broker: a partition's whole remainder per fetch
        spill_large_fetches()


def unset_positions_not_verified() -> None:
    """faust's livelock check (``verify_event_path``, every 2.5 commit intervals) reads each
    assigned partition's ``position``, and aiokafka 0.14 asserts that it is set. It is not while
    the partition awaits an offset reset: just assigned, or its offset out of range because the
    records below it were deleted (retention on a cluster, DeleteRecords in the bench). The
    AssertionError crashed faust's consumer service and the worker with it (exit 1: about one
    bench platform phase in five; docs/performance.md, twenty-seventh session's end). Such a
    partition has no event path to verify yet: it is skipped until it has a position.
    Idempotent."""
    if getattr(AIOKafkaConsumerThread, "_crm_unset_skipped", False):
        return
    verify = AIOKafkaConsumerThread.verify_event_path

    def verified(self: AIOKafkaConsumerThread, now: float, tp: Any) -> None:
        if _awaits_position(self, tp):
            return None
        return verify(self, now, tp)

    AIOKafkaConsumerThread.verify_event_path = verified  # type: ignore[method-assign]
    AIOKafkaConsumerThread._crm_unset_skipped = True  # type: ignore[attr-defined]


def _awaits_position(thread: AIOKafkaConsumerThread, tp: Any) -> bool:
    """Whether ``tp`` is assigned to ``thread``'s consumer without a position (anything else,
    a consumer not started among it, is left to faust's check as it was)."""
    consumer = getattr(thread, "_consumer", None)
    try:
        assignment = consumer._fetcher._subscriptions.subscription.assignment  # type: ignore[union-attr]
        state = assignment.state_value(TopicPartition(tp.topic, tp.partition))
    except AttributeError:
        return False
    return state is not None and not state.has_valid_position


def quiet_fetch_routine() -> None:
    """faust builds its aiokafka consumer itself, with aiokafka's ``consumer_timeout_ms`` of
    200 ms: its fetch routine woke five times a second for nothing, the worker's largest timer
    left once its fetches were paced. Every event the routine acts on wakes it anyway, so it
    times out as the services' consumers do (``crm_platform.kafka.FETCH_ROUTINE_TIMEOUT_MS``;
    docs/performance.md, twenty-fourth session, wakeups). Idempotent."""
    if getattr(AIOKafkaConsumerThread, "_crm_quiet", False):
        return
    create = AIOKafkaConsumerThread._create_worker_consumer

    def quiet(self: AIOKafkaConsumerThread, transport: Any) -> Any:
        consumer = create(self, transport)
        consumer._consumer_timeout = FETCH_ROUTINE_TIMEOUT_MS / 1000  # read by its start (the fetcher's)
        return consumer

    AIOKafkaConsumerThread._create_worker_consumer = quiet  # type: ignore[method-assign]
    AIOKafkaConsumerThread._crm_quiet = True  # type: ignore[attr-defined]


def main() -> None:
    settings = AnalyticsSettings()  # from the environment
    configure_logging(f"{settings.service_name}-worker", settings.log_level)
    tracing.configure(f"{settings.service_name}-worker")  # OTLP export only when configured
    provision_topics(settings)
    pace_consumers(settings)
    worker = AnalyticsWorker(settings)
    watch_progress(worker.app, settings)
    log.info("starting analytics worker %s on %s", settings.app_id, settings.faust_broker)
    freeze_startup_heap()
    try:
        faust.Worker(
            worker.app,
            loglevel=settings.log_level,
            logging_config=logging_config(settings),
            redirect_stdouts=False,
        ).execute_from_commandline()
    finally:
        if worker.crash_looping:  # overrides faust's own exit status 0 after SIGTERM
            sys.exit(EXIT_CRASH_LOOP)


if __name__ == "__main__":
    main()
