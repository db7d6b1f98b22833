"""Consumers that never silently stop: lag from the broker, a progress watchdog, task guards.

A consumer can go quiet while its process looks healthy: an aiokafka client stuck
in a join that never completes, a fetch position that never moves, a task that
ended. Nothing the consumer says about itself can be trusted then, so the
watchdog asks the broker, on a timer, with clients of its own:

* the group's **committed offsets** and each partition's **high watermark**
  give ``crm_consumer_lag`` per partition this member holds (series of a
  partition this member no longer holds are dropped when it is revoked, so a pod
  that lost a partition stops reporting it), counted from the log's **start** when
  the records below it are gone (:func:`behind`);
* a partition with lag whose committed offset has not moved for
  ``CRM_CONSUMER_STALL_SECONDS``, while no other partition of the member moved either, is
  **stalled** (a member busy with other partitions is slow, not stalled; a partition left
  behind while the others move counts after five windows): the watchdog logs an error
  naming the group and partitions, sets ``crm_consumer_stalled`` and **rejoins**
  (drops the Kafka clients and starts the consumer afresh);
* still stalled ``CRM_CONSUMER_STALL_SECONDS`` after that rejoin, the process
  **exits** with :data:`EXIT_STALLED` so its supervisor (``make run``) or
  Kubernetes restarts it.

A stall while the service's own database is unreachable is reported (metric,
log) but neither rejoins nor exits: a new process would wait for the same
database, and the consumer retries on its own when it returns.

The same exit covers a background task (consumer, outbox relay, watchdog) that
ends while the service is running: the process must not keep serving as if it
were whole (:func:`guard_task`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.consumer.fetcher import Fetcher
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.errors import KafkaError, UnknownMemberIdError, for_code
from aiokafka.protocol.group import LeaveGroupRequest

from crm_platform import metrics
from crm_platform.aiokafka_compat import require_patchable
from crm_platform.kafka import make_consumer, wake_routine_after_fetches
from crm_platform.kafka_security import KafkaSecurity

log = logging.getLogger("crm.liveness")

# EX_SOFTWARE from sysexits.h: the process found itself broken and asks to be restarted.
EXIT_STALLED = 70

Fatal = Callable[[str], None]
Check = Callable[[], Awaitable[bool]]


def exit_process(reason: str) -> None:
    """Leave now, non-zero, so the supervisor or Kubernetes starts a fresh process.

    A hard exit: the state that matters is in MongoDB transactions and Kafka, and the
    platform is built to survive a kill at any point (the ledger drops redeliveries,
    the outbox re-publishes), while a graceful shutdown could wait on the very
    client that is stuck.
    """
    log.critical("exiting (code %d): %s", EXIT_STALLED, reason)
    logging.shutdown()
    os._exit(EXIT_STALLED)


def guard_task(task: asyncio.Task[Any], *, stopping: Callable[[], bool], on_fatal: Fatal) -> None:
    """Call ``on_fatal`` if ``task`` ends (returns or raises) while not ``stopping()``.

    A task someone called ``cancel()`` on (a stop, the event loop shutting down) ended on
    purpose; one that ended with a ``CancelledError`` nobody asked for (a library letting
    an inner cancellation escape) died, and counts.
    """

    def done(t: asyncio.Task[Any]) -> None:
        if stopping() or (t.cancelled() and t.cancelling() > 0):
            return
        if t.cancelled():
            how = "ended with a CancelledError nobody asked for"
        elif t.exception() is not None:
            exc = t.exception()
            how = f"failed: {type(exc).__name__}: {exc}"
        else:
            how = "returned"
        log.error("background task %s ended unexpectedly (%s)", t.get_name(), how)
        on_fatal(f"background task {t.get_name()} {how}")

    task.add_done_callback(done)


# --- aiokafka: a consumer whose stop() never returns ------------------------------------------


def harden_aiokafka() -> None:
    """Make ``AIOKafkaConsumer.stop()`` return even when its fetch task swallows the cancel.

    The root cause of consumers going silent after broker restarts. aiokafka 0.14's
    ``Fetcher._fetch_requests_routine`` waits for its cancelled fetch tasks inside
    ``contextlib.suppress(CancelledError)`` whenever the assignment changed (a
    rebalance: after a broker restart the next commit fails with
    ``IllegalGenerationError`` and the group rejoins). A ``Fetcher.close()`` landing
    in that window has its cancellation swallowed: the routine carries on, starts
    waiting for committed offsets from a coordinator that is already closed, and
    ``close()`` awaits it forever. ``stop()`` never returns, so the consumer that
    called it (to reconnect after the failed commit) never consumes again, with
    nothing logged (aio-libs/aiokafka#983 and #1007 are the same family).

    The patched ``close`` cancels the fetch task (and its pending requests) again
    until it has really ended, bounded, then runs aiokafka's own close. Every fetch task also
    wakes its fetch routine when it ends (``crm_platform.kafka.wake_routine_after_fetches``: a
    wake-up the routine can lose otherwise, then waits out its 5 s timeout). Idempotent,
    process-wide; faust's consumer, being aiokafka's, is covered too. Raises
    :class:`crm_platform.aiokafka_compat.UnsupportedAiokafka` (the service does not
    start) on an aiokafka this was not written for.
    """
    if getattr(Fetcher, "_crm_hardened", False):
        return
    require_patchable("crm_platform.liveness.harden_aiokafka (Fetcher.close)")
    original = Fetcher.close

    async def close(self: Fetcher) -> None:
        await _finish(getattr(self, "_fetch_task", None))
        pending = getattr(self, "_pending_tasks", None)
        if pending:
            await _finish(*pending)
            pending.clear()  # finished: aiokafka's close would re-raise their cancellation
        await original(self)

    Fetcher.close = close
    Fetcher._crm_hardened = True
    _leave_abandoned_members()
    wake_routine_after_fetches("crm_platform.liveness.harden_aiokafka (Fetcher._proc_fetch_request)")


# How long a consumer's stop() waits for the LeaveGroup requests of member ids it abandoned
# (:func:`_leave_abandoned_members`) before it closes the client under them.
ABANDONED_LEAVE_SECONDS = 5.0


def _leave_abandoned_members() -> None:
    """Make a group consumer send a ``LeaveGroup`` for every member id it abandons.

    aiokafka forgets its member id whenever the coordinator answers a commit, heartbeat, join
    or sync with ``IllegalGenerationError`` or ``UnknownMemberIdError``
    (``GroupCoordinator.reset_generation``) and joins again as a new member, without telling
    the coordinator it left; and it sends a ``LeaveGroup`` on close only for a member with a
    generation. After a broker restart the coordinator may still hold the old member: Apache
    Kafka waits for it in the next rebalance until its session or rebalance timeout ends, and
    noida-db keeps it for good, so the new member's every join completed a generation led by
    the old one, which never synced: the group stalled, silently, every later start ran into
    ``CRM_KAFKA_START_SECONDS`` (docs/performance.md, twenty-fourth session, restart).

    The patched ``reset_generation`` sends a ``LeaveGroup`` for the member id it is about to
    forget (in a task; a coordinator that does not know it answers ``UnknownMemberIdError``,
    which changes nothing), and ``close`` waits for those requests, bounded by
    :data:`ABANDONED_LEAVE_SECONDS`, and leaves a member that has an id but no generation (one
    aiokafka's close would not leave). Static members (``group.instance.id``) are left to their
    session timeout, as aiokafka leaves them. Only the Kafka protocol's ``LeaveGroup``: the same
    on any broker. Called by :func:`harden_aiokafka`. What each replacement adds to the
    original it closes over is a function of its own below.
    """
    if getattr(GroupCoordinator, "_crm_leaves_abandoned", False):
        return
    reset_generation = GroupCoordinator.reset_generation
    maybe_leave_group = GroupCoordinator._maybe_leave_group
    close = GroupCoordinator.close

    def reset(self: GroupCoordinator) -> None:
        _leave_in_background(self)
        reset_generation(self)

    async def leave_group(self: GroupCoordinator) -> None:
        await _leave_without_generation(self)
        self._crm_leaving = True  # aiokafka's own LeaveGroup, then its reset_generation
        try:
            await maybe_leave_group(self)
        finally:
            self._crm_leaving = False

    async def close_after_leaves(self: GroupCoordinator) -> None:
        await _leaves_sent(self)
        await close(self)

    GroupCoordinator._crm_left = frozenset()  # the ids it left: its own set from its first reset on
    GroupCoordinator.reset_generation = reset
    GroupCoordinator._maybe_leave_group = leave_group
    GroupCoordinator.close = close_after_leaves
    GroupCoordinator._crm_leaves_abandoned = True


def _leave_in_background(coordinator: GroupCoordinator) -> None:
    """Before ``reset_generation`` forgets the member id: a ``LeaveGroup`` for it, in a task,
    once per id (aiokafka may restore an id it reset: a sync that succeeded meanwhile); not for
    a static member, nor during aiokafka's own leave."""
    member = coordinator.member_id
    left = coordinator.__dict__.setdefault("_crm_left", set())
    if (
        member
        and member not in left
        and coordinator._group_instance_id is None
        and not getattr(coordinator, "_crm_leaving", False)
    ):
        left.add(member)
        leaves = coordinator.__dict__.setdefault("_crm_leaves", set())
        task = asyncio.get_running_loop().create_task(_leave(coordinator, member))
        leaves.add(task)
        task.add_done_callback(leaves.discard)


async def _leave_without_generation(coordinator: GroupCoordinator) -> None:
    """On close: leave a (dynamic) member that has an id but no generation, which aiokafka's
    own ``_maybe_leave_group`` skips, unless it was left already."""
    member = coordinator.member_id
    if (
        coordinator._group_instance_id is None
        and member
        and coordinator.generation <= 0
        and member not in coordinator._crm_left
    ):
        await _leave(coordinator, member)


async def _leaves_sent(coordinator: GroupCoordinator) -> None:
    """Before close: the abandoned members' ``LeaveGroup`` requests answered, at most
    :data:`ABANDONED_LEAVE_SECONDS`; those still out then are cancelled."""
    leaves = getattr(coordinator, "_crm_leaves", None)
    if leaves:
        _, late = await asyncio.wait(set(leaves), timeout=ABANDONED_LEAVE_SECONDS)
        for task in late:
            task.cancel()


async def _leave(coordinator: GroupCoordinator, member: str) -> None:
    """One ``LeaveGroup`` for ``member``, logged; a failure is logged, not raised."""
    group = coordinator.group_id
    try:
        response = await coordinator._send_req(LeaveGroupRequest(group, member))
    except KafkaError as exc:
        log.warning("could not leave group %s as abandoned member %s (%s)", group, member, exc)
        return
    error = for_code(response.error_code)
    if error is UnknownMemberIdError:
        log.info("group %s no longer knows abandoned member %s", group, member)
    elif response.error_code:
        log.warning("LeaveGroup of group %s for member %s: %s", group, member, error.__name__)
    else:
        log.info("left group %s as abandoned member %s", group, member)


async def _finish(*tasks: asyncio.Future[Any] | None, rounds: int = 20) -> None:
    """Cancel each task until it is done (a task may swallow a cancel), at most ``rounds`` times."""
    for task in tasks:
        if task is None:
            continue
        for _ in range(rounds):
            if task.done():
                break
            task.cancel()
            await asyncio.wait([task], timeout=0.5)
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" at exit
        elif not task.done():
            log.warning("aiokafka task %r ignores cancellation; leaving it behind", task)


# --- which partitions this member holds -----------------------------------------------------


class PartitionTracker(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka ships no types
    """The partitions assigned to this member; drops a partition's lag series on revocation."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.assigned: frozenset[TopicPartition] = frozenset()

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        gone = set(revoked)
        self.assigned = frozenset(self.assigned - gone)
        drop_lag_series(self.service, gone)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self.assigned = frozenset(assigned)

    def reset(self) -> None:
        """The member left the group (its client was closed): it holds nothing."""
        drop_lag_series(self.service, self.assigned)
        self.assigned = frozenset()


def drop_lag_series(service: str, partitions: Iterable[TopicPartition]) -> None:
    for tp in partitions:
        with contextlib.suppress(KeyError):
            metrics.CONSUMER_LAG.remove(service, tp.topic, str(tp.partition))


# --- stall detection (pure) -------------------------------------------------------------------


def behind(committed: int | None, end: int, start: int = 0) -> int:
    """The records a group has still to read on a partition.

    From its committed offset, or from the log's start when the records below that are
    gone (retention, an operator's delete-records): a consumer there resets to the start
    and, with nothing after it to read, never commits again, so counting from the stale
    committed offset would report lag that no consumer can work off, and a stall that
    every restart would meet again.
    """
    return max(0, end - max(committed or 0, start))


@dataclass
class _Progress:
    committed: int | None
    lagging: bool
    since: float  # when the committed offset last moved, or the lag appeared


@dataclass
class StallDetector:
    """Decides, from samples of committed offsets and high watermarks, which partitions are stalled.

    A partition is stalled when it has had lag (messages past its committed offset)
    for ``stall_seconds`` without its committed offset moving **while the member made no
    progress anywhere else either** (no watched partition's committed offset moved in that
    window): a consumer working through a backlog on other partitions, slowly on a loaded
    machine, is busy, not stalled, and restarting it would only lose its work. A partition
    left behind while the others move is stalled once it has not moved for
    ``starved_factor`` windows (a fetch stuck on one partition). No I/O: the watchdog feeds
    it what it read from the broker.
    """

    stall_seconds: float
    starved_factor: float = 5.0
    _seen: dict[TopicPartition, _Progress] = field(default_factory=dict)
    _moved_at: float | None = None  # when any watched partition's committed offset last moved

    def observe(
        self,
        now: float,
        committed: dict[TopicPartition, int | None],
        ends: dict[TopicPartition, int],
        starts: Mapping[TopicPartition, int] | None = None,
    ) -> list[TopicPartition]:
        """Record one sample; return the stalled partitions among those sampled.

        ``starts``: each partition's log start where it is above 0 (:func:`behind`).
        """
        if self._moved_at is None or any(
            tp in self._seen and self._seen[tp].committed != committed.get(tp) for tp in ends
        ):
            self._moved_at = now
        stalled = []
        for tp, end in ends.items():
            offset = committed.get(tp)
            lag = behind(offset, end, (starts or {}).get(tp, 0))
            seen = self._seen.get(tp)
            if seen is None or seen.committed != offset or lag <= 0 or not seen.lagging:
                self._seen[tp] = _Progress(offset, lag > 0, now)
            elif self._stuck(seen, now):
                stalled.append(tp)
        for tp in set(self._seen) - set(ends):
            del self._seen[tp]  # no longer watched (revoked): forget it
        return sorted(stalled)

    def _stuck(self, seen: _Progress, now: float) -> bool:
        quiet = now - seen.since
        member_quiet = now - (self._moved_at if self._moved_at is not None else now)
        if quiet >= self.stall_seconds and member_quiet >= self.stall_seconds:
            return True
        return quiet >= self.stall_seconds * self.starved_factor

    def forget(self) -> None:
        """Start afresh (after a rejoin the clock restarts for every partition)."""
        self._seen.clear()
        self._moved_at = None


# --- reading the group's state from the broker ---------------------------------------------------


class Offsets(NamedTuple):
    committed: dict[TopicPartition, int | None]  # None: the group never committed there
    ends: dict[TopicPartition, int]  # high watermarks
    starts: dict[TopicPartition, int]  # the log's start, only where the group looks behind


class OffsetsReader:
    """Committed offsets of a group, high watermarks and, where the group looks behind, the
    logs' starts; with its own clients (not the consumer's)."""

    def __init__(self, bootstrap: str, client_id: str, timeout: float) -> None:
        self.bootstrap = bootstrap
        self.client_id = client_id
        self.timeout = timeout
        self._admin: AIOKafkaAdminClient | None = None
        self._ends: AIOKafkaConsumer | None = None

    async def _clients(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        if self._admin is None or self._ends is None:
            admin = AIOKafkaAdminClient(
                bootstrap_servers=self.bootstrap,
                client_id=f"{self.client_id}-admin",
                request_timeout_ms=int(self.timeout * 1000),
                **KafkaSecurity.from_env().aiokafka_kwargs(),
            )
            ends = make_consumer(
                bootstrap_servers=self.bootstrap,
                client_id=f"{self.client_id}-offsets",
                group_id=None,
                enable_auto_commit=False,
                request_timeout_ms=int(self.timeout * 1000),
            )
            try:
                await asyncio.wait_for(admin.start(), self.timeout)
                await asyncio.wait_for(ends.start(), self.timeout)
            except BaseException:
                await _close(admin, ends)
                raise
            self._admin, self._ends = admin, ends
        return self._admin, self._ends

    async def partitions(self, topics: Iterable[str]) -> set[TopicPartition]:
        _, ends = await self._clients()
        found: set[TopicPartition] = set()
        for topic in topics:
            ids = ends.partitions_for_topic(topic)
            if ids is None:
                await asyncio.wait_for(ends._client._wait_on_metadata(topic), self.timeout)
                ids = ends.partitions_for_topic(topic) or set()
            found.update(TopicPartition(topic, p) for p in ids)
        return found

    async def read(self, group: str, partitions: set[TopicPartition]) -> Offsets:
        admin, ends = await self._clients()
        tps = sorted(partitions)
        listed = await asyncio.wait_for(
            admin.list_consumer_group_offsets(group, partitions=tps), self.timeout
        )
        committed: dict[TopicPartition, int | None] = {tp: None for tp in tps}
        for tp, meta in listed.items():
            if meta is not None and meta.offset >= 0:
                committed[tp] = meta.offset
        high = await asyncio.wait_for(ends.end_offsets(tps), self.timeout)
        # The starts only where the group looks behind: caught up (the idle case), no request.
        looks_behind = [tp for tp in tps if (committed[tp] or 0) < high[tp]]
        starts = {}
        if looks_behind:
            starts = await asyncio.wait_for(ends.beginning_offsets(looks_behind), self.timeout)
        return Offsets(committed, dict(high), dict(starts))

    async def close(self) -> None:
        admin, ends, self._admin, self._ends = self._admin, self._ends, None, None
        await _close(admin, ends)


async def _close(*clients: Any) -> None:
    for client in clients:
        if client is None:
            continue
        try:
            await asyncio.wait_for(client.close() if hasattr(client, "close") else client.stop(), 5)
        except Exception as exc:  # a broken client must not stop the watchdog
            log.debug("closing %s failed: %s", type(client).__name__, exc)


# --- the watchdog ------------------------------------------------------------------------------


@dataclass(frozen=True)
class WatchdogConfig:
    service: str
    group_id: str
    topics: list[str]
    bootstrap: str
    stall_seconds: float = 180.0
    interval_seconds: float = 5.0


class ConsumerWatchdog:
    """Reports lag per held partition on a timer; rejoins, then exits, when progress stops.

    ``rejoin`` drops the consumer's Kafka clients and starts it afresh (None: a consumer
    that cannot be rejoined from outside, like faust's, goes straight to ``on_fatal``);
    ``on_fatal``
    ends the process (:func:`exit_process` in services); ``database_ok`` tells a
    stall the consumer cannot help (its database is down) from one it can.
    """

    def __init__(
        self,
        config: WatchdogConfig,
        tracker: PartitionTracker,
        *,
        rejoin: Callable[[], Awaitable[None]] | None,
        on_fatal: Fatal = exit_process,
        database_ok: Check | None = None,
        reader: OffsetsReader | None = None,
    ) -> None:
        self.config = config
        self.tracker = tracker
        self.rejoin = rejoin
        self.on_fatal = on_fatal
        self.database_ok = database_ok
        self.reader = reader or OffsetsReader(
            config.bootstrap, f"{config.service}-watchdog", timeout=max(2.0, config.interval_seconds)
        )
        self.detector = StallDetector(config.stall_seconds)
        self.rejoined_at: float | None = None  # the last rejoin, while the stall lasts
        self._committed_at_rejoin: dict[TopicPartition, int | None] = {}
        self._stopping = asyncio.Event()
        self._stalled_series: set[TopicPartition] = set()
        self._lag_series: set[TopicPartition] = set()

    async def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    await self.tick(time.monotonic())
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # The broker is away (the consumer reconnects on its own) or a
                    # client broke: start with fresh clients on the next tick.
                    log.info("watchdog of %s cannot read offsets: %s", self.config.group_id, exc)
                    await self.reader.close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.config.interval_seconds)
        finally:
            drop_lag_series(self.config.service, self._lag_series)  # this member holds nothing now
            self._lag_series = set()
            await self.reader.close()

    async def tick(self, now: float) -> list[TopicPartition]:
        """One sample: report lag, detect a stall and act on it; returns the stalled partitions."""
        held = set(self.tracker.assigned)
        # Holding nothing, this member watches the whole subscription: a member stuck
        # before it was ever assigned anything is as silent as one stuck after.
        watched = held or await self.reader.partitions(self.config.topics)
        committed, ends, starts = await self.reader.read(self.config.group_id, watched)
        self._report_lag(committed, ends, starts)
        stalled = self.detector.observe(now, committed, ends, starts)
        lagging = [tp for tp in ends if behind(committed.get(tp), ends[tp], starts.get(tp, 0))]
        if not held and len(stalled) < len(lagging):
            stalled = []  # some lagging partitions move: other members hold them and work
        if self.rejoined_at is not None and (
            not lagging or any(committed.get(tp) != c for tp, c in self._committed_at_rejoin.items())
        ):
            log.info("consumer group %s makes progress again", self.config.group_id)
            self.rejoined_at = None  # the rejoin cured it
        # A stall lasts from its detection until progress, across the rejoin (whose
        # restarted clock reports nothing stalled for a while): the alert must see it.
        self._report(set(stalled) | (self._stalled_series if self.rejoined_at is not None else set()))
        if stalled:
            await self._act(now, stalled, committed, ends)
        return stalled

    def _report_lag(
        self,
        committed: dict[TopicPartition, int | None],
        ends: dict[TopicPartition, int],
        starts: dict[TopicPartition, int],
    ) -> None:
        # Held *now*: a revocation during this tick's reads must not bring a series back.
        held = set(self.tracker.assigned) & set(ends)
        drop_lag_series(self.config.service, self._lag_series - held)
        for tp in held:
            lag = behind(committed.get(tp), ends[tp], starts.get(tp, 0))
            metrics.CONSUMER_LAG.labels(self.config.service, tp.topic, str(tp.partition)).set(lag)
        self._lag_series = held

    def _report(self, stalled: set[TopicPartition]) -> None:
        labels = (self.config.service, self.config.group_id)
        for tp in self._stalled_series - set(stalled):
            with contextlib.suppress(KeyError):
                metrics.CONSUMER_STALLED.remove(*labels, tp.topic, str(tp.partition))
        for tp in stalled:
            metrics.CONSUMER_STALLED.labels(*labels, tp.topic, str(tp.partition)).set(1)
        self._stalled_series = stalled

    async def _act(
        self,
        now: float,
        stalled: list[TopicPartition],
        committed: dict[TopicPartition, int | None],
        ends: dict[TopicPartition, int],
    ) -> None:
        where = ", ".join(
            f"{tp.topic}[{tp.partition}] at {committed.get(tp)} of {ends[tp]}" for tp in stalled
        )
        if self.database_ok is not None and not await self.database_ok():
            log.error(
                "consumer group %s stalled on %s while its database is unreachable; waiting for it",
                self.config.group_id,
                where,
            )
            return
        if self.rejoined_at is None and self.rejoin is not None:
            log.error(
                "consumer group %s made no progress for %.0f s on %s; rejoining",
                self.config.group_id,
                self.config.stall_seconds,
                where,
                extra={"consumer_group": self.config.group_id},
            )
            metrics.CONSUMER_REJOINS.labels(self.config.service, self.config.group_id).inc()
            self.rejoined_at = now
            self._committed_at_rejoin = dict(committed)
            self.detector.forget()
            self.tracker.reset()
            await self.rejoin()
            return
        log.critical(
            "consumer group %s stalled on %s for %.0f s%s; restarting the process",
            self.config.group_id,
            where,
            self.config.stall_seconds,
            "" if self.rejoined_at is None else " after a rejoin",
            extra={"consumer_group": self.config.group_id},
        )
        self.on_fatal(f"consumer group {self.config.group_id} stalled on {where}")
