"""Analytics that converges: the worker's facts checked against a replay of the log.

The worker keeps its facts in faust tables whose changelog lives on the broker.
A broker that loses acknowledged writes (the embedded one stopped under
traffic, a Kafka cluster with ``min.insync.replicas=1``) loses changelog writes
too: the worker's memory still has the facts, but after a restart it recovers
the short changelog while its committed offsets say the events were processed,
so the figures stay short for good, silently.

The reconciliation replays the source topics from their beginning up to the
offsets the worker's group has committed (the events it claims to have folded),
folds them into a scratch state with the same pure engine, and merges the
scratch facts into the live ones (:func:`analytics.domain.engine.merge_state`:
earliest times and unions, so nothing the worker has is ever taken away and
nothing is counted twice). What the merge added is the difference: per figure
(funnel stages, latency sample counts), "the log says" minus "the worker had".
The repaired facts go to the changelog like any other write, so the changelog
heals as well. It runs after every table recovery (worker start, rebalance) and
every ``CRM_ANALYTICS_RECONCILE_SECONDS``; the report is stored in analytics'
database and exported by the API as ``crm_analytics_reconciliation_difference``.

Events the broker lost from the source topics themselves are not in the log
either: their senders publish them again (``crm_platform.outbox_audit`` for every
event, handoff receipts for handoffs never received), and they are counted then.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from crm_contracts import utcnow
from crm_platform.dead_letters import Accepted, classify
from crm_platform.kafka import make_consumer
from crm_platform.kafka_security import aiokafka_security

from analytics.domain.engine import AnalyticsState, apply, figure_values, merge_state
from analytics.domain.reads import unread_type
from analytics.domain.snapshot import Reconciliation

log = logging.getLogger("crm.analytics.reconcile")


async def committed_offsets(bootstrap: str, group: str, topics: Iterable[str]) -> dict[TopicPartition, int]:
    """The offsets ``group`` has committed on ``topics`` (partitions it never committed are left out)."""
    wanted = set(topics)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **aiokafka_security())
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {
        TopicPartition(tp.topic, tp.partition): meta.offset
        for tp, meta in offsets.items()
        if tp.topic in wanted and meta.offset >= 0
    }


async def replay_log(  # noqa: C901 - one consumer loop with its stop conditions, read in one piece
    bootstrap: str,
    upto: Mapping[TopicPartition, int],
    *,
    since: Mapping[TopicPartition, int] | None = None,
    on_records: Callable[[int], None] | None = None,
) -> tuple[AnalyticsState, int]:
    """Fold every valid event below ``upto`` (from the start, or from ``since``) into a new state.

    ``on_records`` is told how many records each fetch brought (``crm-analytics-ops``'
    progress bar)."""
    state = AnalyticsState()
    targets = {tp: end for tp, end in upto.items() if end > (since or {}).get(tp, 0)}
    if not targets:
        return state, 0
    consumer = make_consumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    scanned = 0
    try:
        consumer.assign(list(targets))
        for tp in targets:
            start = (since or {}).get(tp)
            if start is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, start)
        remaining = dict(targets)
        while remaining:
            for tp in list(remaining):
                if await consumer.position(tp) >= remaining[tp]:
                    del remaining[tp]
                    consumer.pause(tp)
            if not remaining:
                break
            batches = await consumer.getmany(*remaining, timeout_ms=500, max_records=2000)
            for tp, records in batches.items():
                for record in records:
                    if record.offset >= targets[tp]:
                        break
                    scanned += 1
                    _fold(state, record)
                if on_records is not None:
                    on_records(len(records))
    finally:
        await consumer.stop()
    return state, scanned


def _fold(state: AnalyticsState, record: ConsumerRecord[Any, Any]) -> None:
    """Fold one replayed record as the worker did: the same classification, and the
    plausible-time window around the record's own timestamp, not today's, so a record
    dead-lettered as implausible then does not count now (nor the reverse)."""
    if unread_type(record.headers) is not None:
        return  # a type analytics does not read: the worker skipped it unread too
    appended = datetime.fromtimestamp(record.timestamp / 1000, UTC)
    outcome = classify(record.value, topic=record.topic, now=appended)
    if not isinstance(outcome, Accepted):
        return  # the worker dead-lettered it: it counts for nothing there either
    try:
        apply(state, outcome.envelope, outcome.event)
    except Exception as exc:  # noqa: BLE001 - the worker dead-lettered it as handler_error
        log.debug("replay skips %s: %s", outcome.envelope.event_id, exc)


async def reconcile(
    state: AnalyticsState,
    bootstrap: str,
    upto: Mapping[TopicPartition, int],
    *,
    since: Mapping[TopicPartition, int] | None = None,
    may_merge: Callable[[], bool] = lambda: True,
) -> Reconciliation | None:
    """Replay the log up to ``upto``, merge what ``state`` lacks; ``None`` if merging was refused."""
    started = time.monotonic()
    replay, scanned = await replay_log(bootstrap, upto, since=since)
    if not may_merge():
        return None
    before = figure_values(state.figures, state.records)
    repaired = merge_state(state, replay)  # synchronous: no event is folded in between
    after = figure_values(state.figures, state.records)
    difference = {name: after.get(name, 0) - before.get(name, 0) for name in sorted(set(before) | set(after))}
    return Reconciliation(
        at=utcnow(),
        scanned_events=scanned,
        repaired_facts=repaired,
        difference=difference,
        seconds=time.monotonic() - started,
        committed={f"{tp.topic}[{tp.partition}]": end for tp, end in sorted(upto.items())},
    )


class Reconciler:
    """When the worker reconciles: after each table recovery and on a fixed interval."""

    def __init__(
        self,
        *,
        interval_seconds: float,
        run: Callable[[], Awaitable[Reconciliation | None]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval_seconds
        self._run = run
        self._clock = clock
        self._due = False
        self._next_at: float | None = None
        self.running = False
        self.last: Reconciliation | None = None

    @property
    def enabled(self) -> bool:
        return self.interval > 0

    def recovered(self) -> None:
        """The tables were (re)loaded from the changelog: check them against the log."""
        self._due = True

    def is_due(self) -> bool:
        if not self.enabled or self.running:
            return False
        return self._due or (self._next_at is not None and self._clock() >= self._next_at)

    async def tick(self) -> Reconciliation | None:
        if not self.is_due():
            return None
        self.running = True
        self._due = False
        try:
            report = await self._run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a failed run is retried; the worker keeps going
            log.warning("reconciliation failed (will retry): %s: %s", type(exc).__name__, exc)
            report = None
            self._due = True
        finally:
            self.running = False
            self._next_at = self._clock() + self.interval
        if report is not None:
            self.last = report
        return report


def log_report(report: Reconciliation) -> None:
    extra = {
        "scanned_events": report.scanned_events,
        "repaired_facts": report.repaired_facts,
        "difference": report.short,
    }
    if report.short:
        log.warning(
            "reconciliation: the worker's figures were short of the log by %s; %d facts repaired",
            report.short,
            report.repaired_facts,
            extra=extra,
        )
    else:
        log.info(
            "reconciliation: figures match the log (%d events replayed in %.1f s)",
            report.scanned_events,
            report.seconds,
            extra=extra,
        )
