"""Kafka clients configured once for every service, and topic provisioning.

Only the Kafka protocol and configuration are used here, so the same code runs
against a real cluster, a testcontainers broker or the embedded one. Every client
is built here and gets the process's security settings (TLS, SASL, mTLS; see
:mod:`crm_platform.kafka_security`), so none can connect without them.
"""

from __future__ import annotations

import asyncio
import functools
import io
import logging
import random
import struct
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.client import ConnectionGroup
from aiokafka.conn import AIOKafkaConnection, CloseReason
from aiokafka.consumer.fetcher import Fetcher
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code
from crm_contracts.topics import TOPICS, TopicSpec

from crm_platform.aiokafka_compat import require_patchable
from crm_platform.kafka_security import KafkaSecurity
from crm_platform.wakeups import on_grid

if TYPE_CHECKING:
    from kafka.admin import KafkaAdminClient

log = logging.getLogger("crm.kafka")


_M = 0x5BD1E995
_WORD = 0xFFFFFFFF
_unpackers: dict[int, Callable[[bytes], tuple[int, ...]]] = {}


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (the Java client's ``Utils.murmur2``), equal to aiokafka's for every key:
    its 4-byte words read in one ``struct`` call instead of byte by byte, and only the masks
    the 32-bit arithmetic needs (3 us a 36-byte key against aiokafka's 6-7 us: the relay pays
    it for every event it publishes)."""
    length = len(data)
    h = 0x9747B28C ^ length
    end = length & ~3
    unpack = _unpackers.get(end)
    if unpack is None:
        unpack = _unpackers[end] = struct.Struct(f"<{end // 4}I").unpack_from
    for k in unpack(data):
        k = (k * _M) & _WORD
        k = ((k ^ (k >> 24)) * _M) & _WORD
        h = ((h * _M) & _WORD) ^ k
    rest = length & 3
    if rest:
        if rest == 3:
            h ^= data[end + 2] << 16
        if rest >= 2:
            h ^= data[end + 1] << 8
        h = ((h ^ data[end]) * _M) & _WORD
    h ^= h >> 13
    h = (h * _M) & _WORD
    return h ^ (h >> 15)


# Keys of one length hashed together by murmur2_many from this many on (below, one at a time).
MANY_FROM = 8


def murmur2_many(keys: Sequence[bytes]) -> list[int]:
    """:func:`murmur2` of each key, in order: the keys of one length computed together.

    Kafka's murmur2 mixes each 4-byte word with 32-bit multiplications, shifts and xors, which
    every key of one length needs at the same steps. So the keys' words are put side by side in
    one integer, 64 bits per key (a 32-bit value times the 32-bit constant never carries into the
    next key's bits, and each shift's spill-over lands above bit 32, which the mask clears), and
    each step is one operation on that integer instead of one per key: about a tenth of the CPU
    per key for a changelog flush's thousands of keys (docs/performance.md, sixteenth session,
    replay). Fewer than :data:`MANY_FROM` keys of a length are hashed one at a time."""
    out = [0] * len(keys)
    by_length: dict[int, list[int]] = {}
    for i, key in enumerate(keys):
        by_length.setdefault(len(key), []).append(i)
    for length, places in by_length.items():
        if len(places) < MANY_FROM:
            for i in places:
                out[i] = murmur2(keys[i])
            continue
        for i, h in zip(places, _murmur2_together([keys[i] for i in places], length), strict=True):
            out[i] = h
    return out


def _murmur2_together(keys: list[bytes], length: int) -> tuple[int, ...]:
    """murmur2 of ``keys``, each ``length`` bytes long: one 64-bit lane per key (murmur2_many)."""
    n = len(keys)
    data = b"".join(keys)
    ones = int.from_bytes(b"\x01\x00\x00\x00\x00\x00\x00\x00" * n, "little")
    mask = _WORD * ones  # the low 32 bits of every lane
    h = ((0x9747B28C ^ length) & _WORD) * ones
    lanes = bytearray(8 * n)
    end = length & ~3

    def word(offset: int, size: int) -> int:  # bytes offset..offset+size of every key, per lane
        for b in range(size):
            lanes[b::8] = data[offset + b :: length]
        for b in range(size, 4):
            lanes[b::8] = bytes(n)
        return int.from_bytes(lanes, "little")

    for offset in range(0, end, 4):
        k = (word(offset, 4) * _M) & mask
        k = ((k ^ ((k >> 24) & mask)) * _M) & mask
        h = ((h * _M) & mask) ^ k
    rest = length & 3
    if rest:
        h = ((h ^ word(end, rest)) * _M) & mask
    h ^= (h >> 13) & mask
    h = (h * _M) & mask
    h ^= (h >> 15) & mask
    return struct.unpack(f"<{n}Q", h.to_bytes(8 * n, "little"))


def partition_for(key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
    """aiokafka's ``DefaultPartitioner`` (a key's partition is the Java client's, so every
    producer of a key writes to one partition) with the faster :func:`murmur2`."""
    if key is None:
        return random.choice(available or all_partitions)
    return all_partitions[(murmur2(key) & 0x7FFFFFFF) % len(all_partitions)]


def make_producer(
    bootstrap: str,
    client_id: str,
    security: KafkaSecurity | None = None,
    *,
    max_batch_size: int = 16384,
    compression: str | None = None,
) -> AIOKafkaProducer:
    # Idempotent + acks=all: a retried send never duplicates or reorders within
    # a partition, and a send is only "done" once every in-sync replica has it.
    # ``max_batch_size``: the bytes of one producer batch (aiokafka's default; the outbox
    # relay fills larger ones itself: crm_platform.outbox). ``compression``: the batches'
    # codec (``lz4``, ``zstd``, ``gzip``, ``snappy``) or None; consumers decode any of them.
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        enable_idempotence=True,
        acks="all",
        linger_ms=2,
        request_timeout_ms=15000,
        partitioner=partition_for,
        max_batch_size=max_batch_size,
        compression_type=compression,
        **(security or KafkaSecurity.from_env()).aiokafka_kwargs(),
    )


# aiokafka's fetch routine wakes at least this often even when nothing happened (its
# ``consumer_timeout_ms``, 200 by default): every event it acts on (a fetch done, records
# consumed, a seek, a resumed partition, a new assignment) wakes it anyway, and a node it must
# wait for (a backoff, metadata) sets a shorter timeout of its own, so an idle consumer whose
# fetch task pauses (:func:`pace_empty_fetches`) need not also wake it on its own: once every
# 5 s, not every second (three consumers a department: docs/performance.md, twenty-fourth
# session, wakeups).
FETCH_ROUTINE_TIMEOUT_MS = 5000

# How long a consumer's ``getmany`` waits for records at most (:func:`wait_for_records_ms`): it
# returns as soon as a fetch brings some, so the timeout only bounds how late an idle consumer's
# loop looks at anything else (aiokafka's coordination errors, which ``getmany`` raises on its
# next call). Each timeout was a wake-up: 200 ms, five a second for each of a department's two
# event consumers. A consumer's stop and a lane's failure end the wait at once
# (crm_platform.consumer.EventConsumer).
RECORDS_WAIT_SECONDS = 1.0


def wait_for_records_ms(seconds: float = RECORDS_WAIT_SECONDS) -> float:
    """``getmany``'s ``timeout_ms`` for a wait of about ``seconds`` that ends on the wake-up grid
    (crm_platform.wakeups): with the idle pauses of the process's consumers, not a wake-up of its
    own (``WAKE_GRID_SECONDS``: within half a step of ``seconds``)."""
    now = asyncio.get_running_loop().time()
    return 1000 * (on_grid(now, seconds) - now)


def make_consumer(*topics: str, security: KafkaSecurity | None = None, **config: Any) -> AIOKafkaConsumer:
    """An ``AIOKafkaConsumer`` with the security settings; ``config`` as aiokafka takes it
    (``consumer_timeout_ms`` :data:`FETCH_ROUTINE_TIMEOUT_MS` unless it says otherwise)."""
    config.setdefault("consumer_timeout_ms", FETCH_ROUTINE_TIMEOUT_MS)
    return AIOKafkaConsumer(*topics, **config, **(security or KafkaSecurity.from_env()).aiokafka_kwargs())


def make_admin(bootstrap: str, client_id: str, security: KafkaSecurity | None = None) -> KafkaAdminClient:
    """kafka-python's admin client with the security settings (the bench's tools; services
    provision topics with aiokafka's, :func:`ensure_topics_async`, and never import kafka-python)."""
    from kafka.admin import KafkaAdminClient

    return KafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        **(security or KafkaSecurity.from_env()).kafka_python_kwargs(),
    )


# How long an aiokafka client's start() may take (CRM_KAFKA_START_SECONDS): a consumer's joins its
# group, and a join whose request a broker that just restarted never answers is retried by
# aiokafka forever; and how long its stop() may take (see liveness.harden_aiokafka).
CLIENT_START_SECONDS = 30.0
CLIENT_STOP_SECONDS = 15.0
KafkaClient: TypeAlias = AIOKafkaConsumer | AIOKafkaProducer


class ClientStartTimeout(TimeoutError):
    """An aiokafka client did not start within its bound (:func:`start_client`); it was stopped."""


async def start_client(client: KafkaClient, seconds: float = CLIENT_START_SECONDS) -> None:
    """``client.start()`` within ``seconds``. Past it the half-started client is stopped (within
    :data:`CLIENT_STOP_SECONDS`) and :class:`ClientStartTimeout` says which client, which group
    and how long: the caller reconnects with a fresh one, as after any failed start. Unbounded,
    a consumer whose join a restarted broker never answered stayed unsubscribed, silently, until
    the liveness watchdog's window (``CRM_CONSUMER_STALL_SECONDS``)."""
    try:
        await asyncio.wait_for(client.start(), seconds)
    except TimeoutError:
        # A consumer not assigned yet has nothing to finish: its coordination task, waiting on the
        # join's answer, is cancelled, or stop() would wait for that answer (request_timeout_ms).
        coordinator = getattr(client, "_coordinator", None)
        if (joining := getattr(coordinator, "_coordination_task", None)) is not None:
            joining.cancel()
        await stop_client(client)
        inner = client._client if isinstance(client, AIOKafkaConsumer) else client.client
        group = getattr(client, "_group_id", None)
        raise ClientStartTimeout(
            f"Kafka client {inner._client_id}{f' of group {group}' if group else ''}"
            f" did not start within {seconds:g} s"
        ) from None


async def stop_client(client: KafkaClient, seconds: float = CLIENT_STOP_SECONDS) -> None:
    """``client.stop()`` within ``seconds``; a failure is logged and the client dropped: a client
    stuck on a broker that went away must not keep its owner from reconnecting."""
    try:
        await asyncio.wait_for(client.stop(), timeout=seconds)
    except Exception as exc:
        log.warning("client stop failed (%s: %s); dropping it", type(exc).__name__, exc)


_empty_fetch_pause = 0.0
_fetch_interval = 0.0  # pace_fetches: the least time between fetches that bring records
# A fetch that brought this many bytes or more is a backlog's (a replay, a consumer catching up),
# not a live trickle's: the next one starts no later than BACKLOG_FETCH_INTERVAL after it began,
# whatever the interval, so a long interval for live events never slows a replay.
BACKLOG_FETCH_BYTES = 256 * 1024
BACKLOG_FETCH_INTERVAL = 0.1
# A fetch that found at most this many records on the broker, for a consumer that had caught up,
# is a live trickle's: the next fetch waits the plain pause, as after an empty one (:func:`trickled`).
TRICKLE_FETCH_RECORDS = 2
# A consumer whose fetches came back empty for this long is idle: it then waits
# IDLE_PAUSE_FACTOR times the pause (so an idle platform costs a fifth of the CPU);
# the first record after a quiet second waits that much longer, none while traffic flows.
IDLE_AFTER_SECONDS = 1.0
IDLE_PAUSE_FACTOR = 5


# An idle consumer that no one waits on within a second (:func:`be_patient`: a handoff's receipts)
# pauses this long instead of the idle pause: each of them fetched about 10 times a second at
# the idle platform, a third of a department's fetch rounds (docs/performance.md, eleventh session).
PATIENT_IDLE_PAUSE_SECONDS = 0.5


def pause_after(empty_streak: int, pause: float, *, patient: bool = False) -> float:
    """The wait after the ``empty_streak``-th empty fetch in a row (``pause`` seconds each);
    a ``patient`` consumer's idle pause is :data:`PATIENT_IDLE_PAUSE_SECONDS`."""
    if pause <= 0:
        return 0.0
    if empty_streak * pause < IDLE_AFTER_SECONDS:
        return pause
    idle = pause * IDLE_PAUSE_FACTOR
    return max(idle, PATIENT_IDLE_PAUSE_SECONDS) if patient else idle


_patient_process = False  # pace_patiently: every consumer of this process is patient


def pace_patiently() -> None:
    """Make every consumer of this process patient (:func:`be_patient`): for a process no one
    waits on within a second (the analytics worker, whose figures are written once a second).
    Changes nothing where empty fetches are not paced (Apache Kafka)."""
    global _patient_process
    _patient_process = True


def be_patient(consumer: AIOKafkaConsumer, *, until_records: bool = False) -> AIOKafkaConsumer:
    """Mark a consumer (before it starts) that no one waits on within a second: once idle, it
    fetches every :data:`PATIENT_IDLE_PAUSE_SECONDS` on a broker that answers empty fetches at
    once, not every idle pause. Not for a consumer on a handoff's path (the departments'): a
    record that arrives during a pause waits for its end. A fetch that brings records puts it
    back on the plain pause; :func:`hurry_fetches` ends its pause too.

    ``until_records``: its pause after an empty fetch, the patient one or the plain one, also
    ends as soon as any other consumer of this process fetches records
    (:func:`end_patient_pauses`). For the person keys' consumer: a key is published with the
    event sealed with it (one outbox row, the key first), so while its department's consumer
    finds nothing there is no key to fetch either, and when it fetches records the key
    consumer fetches at once, not after its pause: while keys flow (a key per handoff) a
    handoff's key used to wait out the rest of the plain pause (up to 20 ms with the embedded
    broker), and the handoff with it or in a person-key wait (docs/performance.md, sixteenth
    session, latency). It fetches again at once when records came elsewhere while its fetch
    was on its way, and a handoff's key check waits for such a fetch
    (:func:`records_fetch_pending`) instead of asking the database (eighteenth session,
    p99sales)."""
    client = consumer._client  # the client its fetcher is given (aiokafka's Fetcher._client)
    client._crm_patient = True
    client._crm_until_records = until_records
    return consumer


def pace_records(consumer: AIOKafkaConsumer, seconds: float) -> AIOKafkaConsumer:
    """Make a consumer (before it starts) whose records no one waits on within a second start a
    fetch that brings records at most once per ``seconds``: the records that come meanwhile wait
    on the broker for its next fetch. For a handoff's receipts, which come one per handoff while
    traffic flows: each used to be a fetch of its own in every service's receipt listener (the
    receipts topic is shared), and in the sending department a write of its mark and an offset
    commit too, on the 20 ms plain pause; now a fetch, a write and a commit per interval
    (docs/performance.md, seventeenth session, leads25). A backlog's fetch waits no longer than
    ``BACKLOG_FETCH_INTERVAL`` (as :func:`pace_fetches`). Empty fetches keep their own pause."""
    client = consumer._client  # the client its fetcher is given (aiokafka's Fetcher._client)
    client._crm_fetch_interval = max(0.0, seconds)
    if seconds > 0:
        _pace_fetcher("crm_platform.kafka.pace_records (Fetcher._proc_fetch_request)")
    return consumer


def pace_empty_fetches(delay_ms: int) -> None:
    """Make every aiokafka consumer in this process wait ``delay_ms`` after an empty fetch.

    Apache Kafka holds a fetch that finds nothing for ``fetch.max.wait.ms`` before
    answering, so an idle consumer costs nothing. A broker that answers empty
    fetches at once (the embedded emulator) makes aiokafka's background fetch loop
    spin at full CPU in every consumer, faust's included. This puts the wait on
    the client side: after a fetch that brought no records, the next fetch to that
    broker starts ``delay_ms`` later (records arriving meanwhile wait at most that
    long), and ``IDLE_PAUSE_FACTOR`` times later once the consumer has found nothing
    for ``IDLE_AFTER_SECONDS`` (see :func:`pause_after`). Process-wide; the last
    positive value wins. 0 changes nothing, which is right for Apache Kafka, so a
    component configured for a real cluster never undoes the pacing another one in
    the same process asked for.
    """
    global _empty_fetch_pause
    if delay_ms <= 0:
        return
    _empty_fetch_pause = delay_ms / 1000
    _pace_fetcher("crm_platform.kafka.pace_empty_fetches (Fetcher._proc_fetch_request)")
    log.info("empty fetches paced at %d ms (broker answers empty fetches at once)", delay_ms)


def pace_fetches(interval_ms: int) -> None:
    """Make every aiokafka consumer in this process start a fetch that brings records at most
    once per ``interval_ms`` (to each broker).

    While records trickle in, each fetch brings one or two, and a fetch costs the consumer
    the same whatever it brings (a request naming every assigned partition, its response
    decoded, the round through the consumer's loop): a consumer that does not need every
    record within milliseconds (the analytics worker, whose figures are published once a
    second) gets several records per fetch by waiting out the rest of the interval after
    one that brought some. Under load a fetch brings as much as the fetch sizes allow, so the
    interval costs no throughput once a fetch takes longer than it. Empty fetches are paced by
    :func:`pace_empty_fetches`. Process-wide; the last positive value wins; 0 changes nothing.
    """
    global _fetch_interval
    if interval_ms <= 0:
        return
    _fetch_interval = interval_ms / 1000
    _pace_fetcher("crm_platform.kafka.pace_fetches (Fetcher._proc_fetch_request)")
    log.info("fetches that bring records paced at one per %d ms", interval_ms)


def wait_after_fetch(
    has_data: bool,
    elapsed: float,
    empty_streak: int,
    *,
    patient: bool = False,
    fetched_bytes: int = 0,
    interval: float = 0.0,
) -> float:
    """Seconds to wait after a fetch that took ``elapsed`` and brought ``fetched_bytes`` of
    record batches (the pacing asked for, if any: the process's, or the consumer's own
    ``interval``, the longer; a backlog's fetch at most the backlog's)."""
    if has_data:
        interval = max(_fetch_interval, interval)
        if fetched_bytes >= BACKLOG_FETCH_BYTES:
            interval = min(interval, BACKLOG_FETCH_INTERVAL)
        return max(0.0, interval - elapsed)
    return pause_after(empty_streak, _empty_fetch_pause, patient=patient) if _empty_fetch_pause else 0.0


# The pauses after empty fetches in progress in this process: ``hurry_fetches`` ends them.
_pauses: set[asyncio.Future[None]] = set()
# Those of them that are pauses of ``be_patient(..., until_records=True)`` consumers (plain or
# patient), with the fetcher pausing: another consumer's fetch with records ends them
# (``end_patient_pauses``), and that fetcher then fetches.
_patient_pauses: dict[asyncio.Future[None], object] = {}
# The ``until_records`` fetchers with a fetch on its way, since when (monotonic): from the end of
# a pause (or its ending by records elsewhere) until the next pause begins with what the fetch
# brought read by its consumer. A handoff's key check waits for it (records_fetch_pending).
# Weakly held: a consumer closed meanwhile (a reconnect) leaves no fetcher behind.
_records_fetching: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()
_records_unread: weakref.WeakSet[Any] = weakref.WeakSet()  # their last fetch's records not read yet
_records_paused: weakref.WeakSet[Any] = weakref.WeakSet()  # those in a pause
# Woken when such a fetcher pauses with what it fetched read (watch_records_fetches).
_records_fetch_waiters: set[asyncio.Future[None]] = set()
# How many fetches of this process brought records (the ``until_records`` consumers' aside) or
# were hurried (``hurry_fetches``): a key consumer whose fetch was on its way meanwhile fetches
# again at once instead of pausing.
_records_fetched = 0
# A fetch on its way for longer than this is not waited for (its consumer stopped, say).
RECORDS_FETCH_STALE_SECONDS = 1.0


def hurry_fetches() -> None:
    """End every empty-fetch pause in progress in this process: each paced consumer fetches now.

    For a record that waits for what another consumer of this process fetches (a sealed
    event for its person key, crm_platform.shredding): that consumer's next fetch then
    need not wait out the pause after its last empty one (and a key consumer's fetch already
    on its way is sent again as soon as it is back)."""
    global _records_fetched
    _records_fetched += 1
    end_patient_pauses()
    for waiter in list(_pauses):
        _end_pause(waiter)
    _pauses.clear()


def end_patient_pauses() -> None:
    """A consumer of this process fetched records: end the pauses of the consumers that wait
    for records elsewhere (``be_patient(..., until_records=True)``); each has a fetch on its way
    from now (:func:`records_fetch_pending`)."""
    now = time.monotonic()
    for waiter, fetcher in list(_patient_pauses.items()):
        _end_pause(waiter)
        _records_fetching[fetcher] = now
    _patient_pauses.clear()


def records_fetch_pending() -> bool:
    """Whether an ``until_records`` consumer of this process (the person keys') has a fetch on
    its way: begun, or its pause ended by another consumer's records (it fetches next)."""
    if not _records_fetching:
        return False
    fresh = time.monotonic() - RECORDS_FETCH_STALE_SECONDS
    return any(since > fresh for since in _records_fetching.values())


def watch_records_fetches(waiter: asyncio.Future[None]) -> None:
    """End ``waiter`` when an ``until_records`` consumer pauses with nothing on its way (what it
    fetched read by its consumer): a key not fetched by then is not coming with that fetch."""
    _records_fetch_waiters.add(waiter)


def unwatch_records_fetches(waiter: asyncio.Future[None]) -> None:
    _records_fetch_waiters.discard(waiter)


def records_fetch_read(fetcher: object) -> None:
    """What ``fetcher``'s last fetch brought has been read by its consumer (the key consumer
    classifies its records as it takes them, crm_platform.consumer)."""
    if fetcher is None:
        return
    _records_unread.discard(fetcher)
    if fetcher in _records_paused:
        _records_settled(fetcher)


def _records_pausing(fetcher: object, pausing: bool) -> None:
    """An ``until_records`` fetcher begins (``pausing``) or ends a pause."""
    if not pausing:
        _records_paused.discard(fetcher)
        _records_fetching[fetcher] = time.monotonic()  # it fetches next
        return
    _records_paused.add(fetcher)
    if fetcher not in _records_unread:
        _records_settled(fetcher)


def _records_settled(fetcher: object) -> None:
    """``fetcher`` pauses with everything it fetched read: nothing on its way; wake the waiters
    to look again (a key not fetched by now is asked for in the database)."""
    _records_fetching.pop(fetcher, None)
    for waiter in list(_records_fetch_waiters):
        _end_pause(waiter)
    _records_fetch_waiters.clear()


async def pause_empty(seconds: float, *, until_records: bool = False, fetcher: object = None) -> None:
    """Wait ``seconds`` after an empty fetch, or until ``hurry_fetches`` (cancellable), or, with
    ``until_records``, until another consumer of this process fetches records (``fetcher``: the
    one pausing, which then has a fetch on its way).

    As cheap as ``asyncio.sleep`` (one future, one timer): an idle consumer pauses about ten
    times a second, and ``asyncio.wait_for`` on a pause that runs out cancels, awaits and
    raises besides (a few more loop rounds and an exception per pause, in every idle process)."""
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    # An idle or patient pause ends on the wake-up grid (crm_platform.wakeups), with the process's
    # other idle waits: its consumers' pauses and waits for records, PyMongo's polls.
    timer = loop.call_at(on_grid(loop.time(), seconds), _end_pause, waiter)
    _pauses.add(waiter)
    if until_records:
        _patient_pauses[waiter] = fetcher
    try:
        await waiter
    finally:
        timer.cancel()
        _pauses.discard(waiter)
        _patient_pauses.pop(waiter, None)


def _end_pause(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def fetched_bytes(fetcher: Fetcher, request: Any) -> int:
    """The record batches' bytes a fetch request just buffered (read right after the fetch, before
    any other task can consume them: a request names only partitions with nothing buffered)."""
    total = 0
    buffered = fetcher._records
    for topic, partitions in getattr(request, "topics", ()):
        for partition, *_ in partitions:
            fetched = getattr(buffered.get(TopicPartition(topic, partition)), "_partition_records", None)
            records = getattr(fetched, "_records", None)
            total += records.size_in_bytes() if records is not None else 0
    return total


def _pace_fetcher(what: str) -> None:
    """Wrap aiokafka's fetch round once: after it, wait as :func:`wait_after_fetch` says; after an
    empty fetch and its pause, send the same request again while :func:`may_fetch_again` says
    nothing changed (the fetcher's own round is not needed for it)."""
    if getattr(Fetcher, "_crm_paced", False):
        return
    require_patchable(what)
    original = Fetcher._proc_fetch_request

    async def paced(self: Fetcher, *args: Any, **kwargs: Any) -> bool:
        look_again_when_done(self)
        fetch = original
        while True:
            has_data, paused = await _paced_round(self, fetch, args, kwargs)
            if has_data or not paused or not may_fetch_again(self, args):
                return has_data
            fetch = again if _idle(self) else original

    async def again(self: Fetcher, *args: Any, **kwargs: Any) -> bool:
        """The same request once more: aiokafka's fetch only if the answer is not the last empty
        one (:func:`same_empty_answer`)."""
        try:
            if await same_empty_answer(self, args):
                return False
        except asyncio.CancelledError:
            return False  # as aiokafka's own fetch: closing, or the assignment changed
        return bool(await original(self, *args, **kwargs))

    Fetcher._proc_fetch_request = paced
    Fetcher._crm_paced = True


def look_again_when_done(fetcher: Fetcher) -> None:
    """Make aiokafka's fetch routine look again once this fetch task has ended and its broker is
    free: called in the task, so the callback comes after the routine's own, which frees the broker
    (``_in_flight``).

    Without it a wake-up could be lost: the routine woken for records taken (its
    ``_wait_consume_future``) in the loop round in which the task ended sees the task done but
    its broker still in flight, sends nothing, and waits with no task to wake it, for its
    timeout (:data:`FETCH_ROUTINE_TIMEOUT_MS`, 5 s). Records are taken while a fetch task is on
    its way whenever a partition's records were held while the others were fetched (counted
    twice in each of two platform phases, the receipts' listener and leads' department
    consumer), and every time with a trickle's records taken during its fetch's pause
    (:func:`hand_over`: five stalls of 5 s in a row in sales' department consumer, the 25/s p99
    5.4 s; docs/performance.md, twenty-sixth session, fetchtail). A routine that is not waiting for
    records taken loops once more, as it would anyway: the task ended."""
    task = asyncio.current_task()
    if task is not None and task not in _looking_again:
        _looking_again.add(task)  # once per task: a paced task sends its fetch again in itself
        task.add_done_callback(functools.partial(_look_again, fetcher))


# The fetch tasks that will wake their routine when they end (:func:`look_again_when_done`).
_looking_again: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()


def wake_routine_after_fetches(what: str) -> None:
    """Make every fetch task of every aiokafka consumer in this process wake its fetch routine
    once it has ended and its broker is free (:func:`look_again_when_done`), on any broker.

    Stock aiokafka has the same order: the routine woken for records taken in the round before
    a fetch task's end runs before the task's callback that frees the broker, finds it in flight
    and waits for its timeout, which the platform sets to :data:`FETCH_ROUTINE_TIMEOUT_MS` (5 s;
    aiokafka's own is 0.2 s) on every consumer, a real cluster's too. The paced fetch round
    (:func:`_pace_fetcher`, a broker that answers empty fetches at once) does it in its own
    wrapper as well; a task registers once. Process-wide and idempotent; called by
    ``crm_platform.liveness.harden_aiokafka``."""
    if getattr(Fetcher, "_crm_looks_again", False):
        return
    require_patchable(what)
    original = Fetcher._proc_fetch_request

    async def looking_again(self: Fetcher, *args: Any, **kwargs: Any) -> bool:
        look_again_when_done(self)
        return bool(await original(self, *args, **kwargs))

    Fetcher._proc_fetch_request = looking_again
    Fetcher._crm_looks_again = True


def _look_again(fetcher: Fetcher, task: asyncio.Task[Any]) -> None:
    _looking_again.discard(task)
    waiting = fetcher._wait_consume_future  # what the routine waits on besides its tasks
    if waiting is not None:
        _end_pause(waiting)


async def _paced_round(
    self: Fetcher, original: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[bool, bool]:
    """One fetch and the wait after it: (whether it brought records, whether it paused in full)."""
    global _records_fetched
    started = time.monotonic()
    until_records = getattr(self._client, "_crm_until_records", False)
    seen = _records_fetched
    has_data = await _fetch_marked(self, original, args, kwargs, until_records)
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        # aiokafka's fetch swallowed a cancel (the fetcher is closing or the
        # assignment changed): pausing now would keep the fetcher waiting on this
        # task, widening the window in which its own close() is swallowed
        # (see crm_platform.liveness.harden_aiokafka).
        return False, False
    streak = 0 if has_data else getattr(self, "_crm_empty_streak", 0) + 1
    self._crm_empty_streak = streak
    patient = _patient_process or getattr(self._client, "_crm_patient", False)
    if has_data and not until_records:
        _records_fetched += 1
        if _patient_pauses:
            end_patient_pauses()  # the key consumer fetches the keys of these records now
    if until_records and _empty_fetch_pause:
        return await _pause_until_records(self, has_data, streak, patient, seen != _records_fetched)
    own: float = getattr(self._client, "_crm_fetch_interval", 0.0)  # pace_records
    size = 0
    if has_data and max(_fetch_interval, own) > BACKLOG_FETCH_INTERVAL:  # only where it can change the wait
        size = fetched_bytes(self, args[2] if len(args) > 2 else kwargs.get("request"))
    elapsed = time.monotonic() - started
    wait = wait_after_fetch(has_data, elapsed, streak, patient=patient, fetched_bytes=size, interval=own)
    if has_data and not max(_fetch_interval, own) and trickled(self, args):  # then wait is 0
        hand_over(self)
        return await _pause_after_round(has_data, _empty_fetch_pause, interval=False)
    return await _pause_after_round(has_data, wait, interval=has_data)


async def _pause_after_round(has_data: bool, wait: float, *, interval: bool) -> tuple[bool, bool]:
    """The wait after a fetch round, if any: a fetch interval's (``interval``: :func:`pace_fetches`,
    :func:`pace_records`) or an empty fetch's or a trickle's pause (:func:`pause_empty`, ended by
    :func:`hurry_fetches`). (Whether the fetch brought records, whether it paused in full.)"""
    if wait <= 0:
        return has_data, False
    # Still inside the fetch task, so the fetcher counts this broker as
    # busy and sends it nothing new until the pause is over.
    try:
        if interval:
            await asyncio.sleep(wait)
        else:
            await pause_empty(wait)
    except asyncio.CancelledError:
        return False, False  # closing: the fetcher cancels its tasks and moves on
    return has_data, True


def hand_over(fetcher: Fetcher) -> None:
    """Wake the consumer's waits for records now, for a fetch task that pauses after bringing some
    (:func:`trickled`): aiokafka's fetch routine wakes them only when the task ends, which held a
    trickle's records for the pause (the trace's produced -> sales' transaction p50 14.8 -> 32.1 ms)."""
    for waiter in list(fetcher._fetch_waiters):
        _end_pause(waiter)


def trickled(fetcher: Fetcher, args: tuple[Any, ...]) -> bool:
    """Whether a fetch that brought records was a live trickle's, on a broker that answers empty
    fetches at once (:func:`pace_empty_fetches`): its request named every partition the consumer
    holds (nothing was buffered: the consumer had caught up) and the broker held at most
    :data:`TRICKLE_FETCH_RECORDS` records past the offsets asked (each partition's high
    watermark, as the answer gave it). The next fetch then waits the plain pause, as after an
    empty one: sent at once, it found nothing in nearly every round (at 25 handoffs a second, a
    third of a department consumer's 68 fetch rounds a second were these; docs/performance.md,
    twenty-fifth session, fetchrounds), and a record that comes meanwhile waits no longer than
    one that comes during an empty fetch's pause. A fetch with more behind it (a backlog, a
    saturated flow) is followed by the next at once, as before. Never on Apache Kafka (no pause:
    the broker holds the fetch)."""
    if not _empty_fetch_pause or len(args) < 3:
        return False
    assignment, _, request = args[:3]
    asked = _asked(fetcher, request)
    if len(asked) != len(assignment.tps):
        return False
    seen = 0
    for tp, offset in asked:
        highwater = getattr(assignment.state_value(tp), "highwater", None)
        if highwater is None:
            return False
        seen += max(0, highwater - offset)
    return seen <= TRICKLE_FETCH_RECORDS


async def _fetch_marked(
    self: Fetcher, original: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], marked: bool
) -> bool:
    """aiokafka's fetch; a ``marked`` (``until_records``) consumer's counted as on its way
    (:func:`records_fetch_pending`) until it pauses with what it brought read."""
    if not marked:
        return bool(await original(self, *args, **kwargs))
    _records_fetching[self] = time.monotonic()
    has_data: bool = await original(self, *args, **kwargs)
    if has_data:
        _records_unread.add(self)  # on its way until its consumer reads them (records_fetch_read)
    return has_data


async def _pause_until_records(
    fetcher: Fetcher, has_data: bool, streak: int, patient: bool, missed: bool
) -> tuple[bool, bool]:
    """The wait of an ``until_records`` consumer (the person keys') after a fetch: none after one
    that brought records, nor after one on its way while another consumer fetched records (or a
    key check hurried fetches), whose keys it may have missed (it used to pause the plain pause
    then, the handoff with it); otherwise its pause (:func:`pause_after`), ended by the next
    records fetched elsewhere (:func:`end_patient_pauses`), during which it has nothing on its way
    once its consumer has read what it fetched (:func:`records_fetch_pending`).

    Its own rhythm while keys flow is kept: a key often reaches this process before its handoff,
    which then needs no wait. Without it (the idle pause from the first empty fetch, tried again
    here) the key fetch rounds per handoff fell from about 2 to 0.6 at 25/s, but every key came
    after its handoff and person-key waits rose (40 in 250 against 0-12; docs/performance.md,
    eighteenth session, p99sales)."""
    if missed or has_data:
        # Not after a trickle of keys either (:func:`trickled`): paused then, 291 of 550 handoffs
        # waited for their person key at 25/s (docs/performance.md, twenty-fifth session).
        return has_data, False
    _records_pausing(fetcher, True)
    try:
        await pause_empty(
            pause_after(streak, _empty_fetch_pause, patient=patient), until_records=True, fetcher=fetcher
        )
    except asyncio.CancelledError:
        _records_paused.discard(fetcher)  # closing: nothing on its way
        return False, False  # the fetcher cancels its tasks and moves on
    _records_pausing(fetcher, False)
    return has_data, True


def may_fetch_again(fetcher: Fetcher, args: tuple[Any, ...]) -> bool:
    """Whether an empty fetch's request (``args``: aiokafka's ``assignment, node_id, request``)
    can be sent again as it is, in the same fetch task, instead of returning to aiokafka's fetch
    routine to build the same request again (about a fifth of an idle department's CPU: the
    routine's round, its ``asyncio.wait``, a new task; docs/performance.md, fourteenth session,
    idle). Only if the request names every partition of the assignment (one broker: the embedded
    one, where fetches are paced), each still at the offset asked and not paused, nothing is
    buffered, and no consumer took records or moved a position since the routine's last round
    (its ``_wait_consume_future``, which ``seek`` and every consumption set, is still pending)."""
    if len(args) < 3:
        return False
    assignment, _, request = args[:3]
    consumed = getattr(fetcher, "_wait_consume_future", None)
    if consumed is None or consumed.done() or fetcher._records or not assignment.active:
        return False
    asked = _asked(fetcher, request)
    for tp, offset in asked:
        state = assignment.state_value(tp)
        if state is None or state.paused or not state.has_valid_position or state.position != offset:
            return False
    return len(asked) == len(assignment.tps)


def _idle(fetcher: Fetcher) -> bool:
    """Whether a consumer found nothing for :data:`IDLE_AFTER_SECONDS` (its pauses are the idle or
    the patient one): only then is its request sent again as bytes (:func:`same_empty_answer`), so
    a consumer that had records within the second (the handoffs at 25/s) fetches as before, and
    the first records after an idle spell take one round trip more on a pause of 0.1 s or more."""
    return (
        bool(_empty_fetch_pause)
        and getattr(fetcher, "_crm_empty_streak", 0) * _empty_fetch_pause >= IDLE_AFTER_SECONDS
    )


def _asked(fetcher: Fetcher, request: Any) -> list[tuple[TopicPartition, int]]:
    """A fetch request's partitions and offsets, made once per request (an idle consumer asks the
    same request again and again: a ``TopicPartition`` per partition each time was a third of
    :func:`may_fetch_again`, twenty partitions in sales)."""
    kept = getattr(fetcher, "_crm_asked", None)
    if kept is not None and kept[0] is request:
        return kept[1]  # type: ignore[no-any-return]
    asked = [
        (TopicPartition(topic, partition), offset)
        for topic, partitions in request.topics
        for partition, offset, *_ in partitions
    ]
    fetcher._crm_asked = (request, asked)
    return asked


class _Probe:
    """An idle consumer's fetch request as the bytes it was sent as (its correlation id aside),
    and the last answer to it known to bring nothing (its correlation id aside too)."""

    __slots__ = ("answer", "conn", "head", "request", "states", "tail", "versioned")

    def __init__(self, request: Any, conn: AIOKafkaConnection) -> None:
        self.request = request
        self.conn = conn
        self.versioned = request.prepare(conn._versions)
        # Every request header begins with api_key (2 bytes), api_version (2), correlation_id (4).
        header = self.versioned.build_request_header(correlation_id=0, client_id=conn._client_id).encode()
        message = header + self.versioned.encode()
        self.head = struct.pack(">i", len(message)) + header[:4]
        self.tail = message[8:]
        self.answer: bytes | None = None
        self.states: list[Any] = []  # the asked partitions' states, stamped at each answer

    async def ask(self) -> bytes | None:
        """Send the request again; its answer's frame, or None (no answer: aiokafka's fetch then
        finds out why, as it would have)."""
        conn = self.conn
        correlation_id = conn._next_correlation_id()
        loop = asyncio.get_running_loop()
        answered: asyncio.Future[bytes] = loop.create_future()
        try:
            conn._writer.write(self.head + struct.pack(">i", correlation_id) + self.tail)
        except OSError:
            conn.close(reason=CloseReason.CONNECTION_BROKEN)
            return None
        # aiokafka hands the frame of a request queued without a correlation id (its SASL
        # tokens') to the future as it is, undecoded; frames come back in the order sent.
        conn._requests.append((None, None, answered))
        timer = loop.call_later(conn._request_timeout, _time_out, answered)
        try:
            frame = await answered
        except (KafkaError, TimeoutError):
            return None  # the connection closed, or no answer in time
        finally:
            timer.cancel()
        if frame[:4] != struct.pack(">i", correlation_id):
            conn.close(reason=CloseReason.OUT_OF_SYNC)  # as aiokafka does on a mismatch
            return None
        return frame

    def unchanged(self, frame: bytes, assignment: Any) -> bool:
        """Whether ``frame`` brings nothing: the same bytes as the last empty answer, or, the first
        time, an answer decoded and found empty (no records, no error)."""
        if self.answer is not None:
            if frame[4:] != self.answer:
                self.answer = None  # something changed: aiokafka's fetch reads it
                return False
            now_ms = int(1000 * time.time())
            for state in self.states:
                state.timestamp = now_ms  # the last fetch's time, as aiokafka keeps it (faust reads it)
            return True
        states = self._empty_answer(frame, assignment)
        if states is None:
            return False
        self.answer, self.states = frame[4:], states
        return True

    def _empty_answer(self, frame: bytes, assignment: Any) -> list[Any] | None:
        """The answer decoded as aiokafka would; the asked partitions' states updated as aiokafka
        does for an empty one, or None if it brings records or an error."""
        buffer = io.BytesIO(frame)
        self.versioned.parse_response_header(buffer)
        response = self.versioned.RESPONSE_TYPE.decode(buffer)
        if getattr(response, "error_code", 0):
            return None
        for _, partitions in response.topics:
            for _, error_code, _, *part_data in partitions:
                if error_code or part_data[-1]:
                    return None
        offsets = {
            TopicPartition(topic, partition): offset
            for topic, partitions in self.request.topics
            for partition, offset, *_ in partitions
        }
        now_ms = int(1000 * time.time())
        states = []
        for topic, partitions in response.topics:
            for partition, _, highwater, *part_data in partitions:
                tp = TopicPartition(topic, partition)
                state = assignment.state_value(tp)
                if state is None or not state.has_valid_position or state.position != offsets.get(tp):
                    continue  # aiokafka discards an answer for a partition that moved meanwhile
                state.highwater = highwater
                state.lso = part_data[0] if response.API_VERSION >= 4 else None
                state.timestamp = now_ms
                states.append(state)
        return states


def _time_out(answered: asyncio.Future[bytes]) -> None:
    if not answered.done():
        answered.set_exception(TimeoutError())


async def same_empty_answer(fetcher: Fetcher, args: tuple[Any, ...]) -> bool:
    """Whether the request in ``args`` (one that :func:`may_fetch_again` let be sent again), sent
    again, brings the same empty answer as last time: then nothing changed on the broker for
    these partitions (an answer carries each partition's high watermark, start offset and error),
    and the answer is not decoded. An idle consumer sent the same request about ten times a
    second and decoded the same answer each time: aiokafka's request built and encoded again,
    the answer's structs decoded, each partition's answer handled (about a third of an idle
    department's CPU; docs/performance.md, twenty-third session, idle). Any other answer, or no
    usable connection, is for aiokafka's own fetch, which then runs as before. Only for an idle
    consumer (:func:`_idle`)."""
    assignment, node_id, request = args[:3]
    conns = getattr(getattr(fetcher, "_client", None), "_conns", None)
    conn = conns.get((node_id, ConnectionGroup.DEFAULT)) if isinstance(conns, dict) else None
    if conn is None or conn._writer is None or not conn.connected():
        return False
    probe: _Probe | None = getattr(fetcher, "_crm_probe", None)
    if probe is None or probe.request is not request or probe.conn is not conn:
        probe = _Probe(request, conn)
        fetcher._crm_probe = probe
    frame = await probe.ask()
    return frame is not None and probe.unchanged(frame, assignment)


def release_read_frames() -> None:
    """Make every aiokafka connection of this process drop each response frame once handled.

    aiokafka's reader loop (``AIOKafkaConnection._read``) keeps the last frame it read in a
    local until the next frame arrives. A fetch response's record batches are copied out of
    the frame as it is decoded, so the frame itself is dead weight, and a consumer that is
    working through what it fetched sends that broker no new fetch: the frame stays for as
    long as the records last. The embedded broker answers a fetch with everything a
    partition holds from the position, whatever ``max_partition_fetch_bytes`` says
    (measured: 17.8 MB for 100,000 sealed handoffs in one response), so sales draining a
    backlog kept the whole backlog twice (docs/performance.md, thirteenth session, drain).
    The same loop, with the frame released before waiting for the next one. Idempotent,
    process-wide; raises :class:`crm_platform.aiokafka_compat.UnsupportedAiokafka` on an
    aiokafka it was not written for.
    """
    if getattr(AIOKafkaConnection, "_crm_frames_released", False):
        return
    require_patchable("crm_platform.kafka.release_read_frames (AIOKafkaConnection._read)")
    AIOKafkaConnection._read = staticmethod(_read_frames)
    AIOKafkaConnection._crm_frames_released = True


# A partition at most this many records behind its end (as its last fetch found it) is caught up:
# any fetch may ask for it. The others (a backlog, or not fetched yet) join a fetch one at a time.
CAUGHT_UP_RECORDS = 1000


def spread_backlog_fetches() -> None:
    """Make each fetch of this process's aiokafka consumers ask for at most one partition that
    may hold a backlog, beside every partition known to be caught up.

    The embedded broker answers a fetch with everything each partition holds from the position,
    whatever the fetch sizes say, so a consumer starting on a backlog received all of it in one
    response and held it twice while it was decoded (17.8 MB for 100,000 sealed handoffs over
    six partitions: sales' peak RSS grew with the backlog; docs/performance.md, thirteenth
    session, drain). One such partition per fetch: a response is a sixth of that, and the other
    partitions follow on the next round trips, while the first one's records are handled. A
    live consumer's partitions are all caught up: its fetches do not change. Only for a broker
    that ignores fetch sizes (the embedded one: services call it where they pace empty
    fetches); against Kafka, which honours them, a consumer behind on several partitions would
    get less per round trip. Idempotent, process-wide; raises
    :class:`crm_platform.aiokafka_compat.UnsupportedAiokafka` on an aiokafka it was not written for.
    """
    if getattr(Fetcher, "_crm_spread", False):
        return
    require_patchable("crm_platform.kafka.spread_backlog_fetches (Fetcher._get_actions_per_node)")
    original = Fetcher._get_actions_per_node

    def spread(self: Fetcher, assignment: Any) -> Any:
        actions = original(self, assignment)
        for _, request in actions[0]:
            request._topics = one_backlog(request.topics, assignment.state_value)
        return actions

    Fetcher._get_actions_per_node = spread
    Fetcher._crm_spread = True


Asked = list[tuple[str, list[tuple[int, int, int]]]]  # (topic, [(partition, offset, max bytes)])


def one_backlog(topics: Asked, state: Callable[[TopicPartition], Any]) -> Asked:
    """Of a fetch request's partitions: those caught up, and the first that is not (its
    ``highwater`` unknown, or more than :data:`CAUGHT_UP_RECORDS` past the offset asked)."""
    kept: Asked = []
    backlog_taken = False
    for topic, partitions in topics:
        keep = []
        for asked in partitions:
            end = state(TopicPartition(topic, asked[0])).highwater
            caught_up = end is not None and end - asked[1] <= CAUGHT_UP_RECORDS
            if caught_up or not backlog_taken:
                keep.append(asked)
                backlog_taken = backlog_taken or not caught_up
        if keep:
            kept.append((topic, keep))
    return kept


async def _read_frames(self_ref: Callable[[], Any]) -> None:
    """aiokafka 0.14.0's ``AIOKafkaConnection._read`` (errors go to its done callback), except
    that no frame is referenced while the next one is awaited."""
    self = self_ref()
    if self is None:
        return
    reader = self._reader
    del self
    while True:
        (size,) = struct.unpack(">i", await reader.readexactly(4))
        frame = await reader.readexactly(size)
        self = self_ref()
        if self is None:
            return
        self._handle_frame(frame)
        del self, frame  # the decoded response holds what it needs


@dataclass
class ProvisionReport:
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)


def ensure_topics(
    bootstrap: str,
    specs: Iterable[TopicSpec] = TOPICS,
    *,
    replication_factor: int | None = None,
    client_id: str = "crm-provisioner",
) -> ProvisionReport:
    """:func:`ensure_topics_async` for synchronous callers (in a thread of its own when the caller's
    thread runs an event loop)."""
    work = functools.partial(
        ensure_topics_async, bootstrap, replication_factor, specs=specs, client_id=client_id
    )
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(work())
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, work()).result()


async def ensure_topics_async(
    bootstrap: str,
    replication_factor: int | None = None,
    *,
    specs: Iterable[TopicSpec] = TOPICS,
    client_id: str = "crm-provisioner",
) -> ProvisionReport:
    """Create missing topics from the table; leave existing ones alone, report drift.

    The replication factor is capped by the number of brokers so the same table
    provisions a three-broker cluster and a one-broker development setup. aiokafka's admin
    client, not kafka-python's: every service provisions at start-up, and kafka-python's import
    alone kept 6.7 MB resident in each (docs/performance.md, fourteenth session, drain).
    """
    specs = list(specs)
    report = ProvisionReport()
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, client_id=client_id, **KafkaSecurity.from_env().aiokafka_kwargs()
    )
    try:
        await admin.start()
        brokers = await _broker_count(admin)
        existing = {t["topic"]: t for t in await admin.describe_topics()}
        missing: list[NewTopic] = []
        for spec in specs:
            if spec.name in existing:
                report.existing.append(spec.name)
                partitions = len(existing[spec.name].get("partitions", []))
                if partitions != spec.partitions:
                    report.mismatches.append(
                        f"{spec.name}: {partitions} partitions, table says {spec.partitions}"
                    )
                continue
            rf = min(replication_factor or spec.replication_factor, brokers)
            missing.append(NewTopic(spec.name, spec.partitions, rf, topic_configs=spec.topic_configs()))
        if missing:
            _raise_creation_errors(await admin.create_topics(missing))
            report.created.extend(t.name for t in missing)
        report.mismatches.extend(await _config_drift(admin, [s for s in specs if s.name in existing]))
    finally:
        await admin.close()
    for line in report.mismatches:
        log.warning("topic drift: %s", line)
    if report.created:
        log.info("created topics: %s", ", ".join(report.created))
    return report


def _raise_creation_errors(response: Any) -> None:
    """A topic another service's replica created first is fine; any other error is raised."""
    for topic, code, message in response.topic_errors:
        if code not in (0, TopicAlreadyExistsError.errno):
            raise for_code(code)(f"creating {topic}: {message}")


async def _broker_count(admin: AIOKafkaAdminClient) -> int:
    try:
        return max(1, len((await admin.describe_cluster()).get("brokers", [])))
    except Exception:
        # Some Kafka-protocol brokers answer DescribeCluster in a shape this
        # client cannot parse; the bootstrap metadata knows the brokers too.
        return max(1, len(admin._client.cluster.brokers()))


async def _config_drift(admin: AIOKafkaAdminClient, specs: list[TopicSpec]) -> list[str]:
    if not specs:
        return []
    try:
        results = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, s.name) for s in specs]
        )
    except Exception as exc:  # some brokers do not implement DescribeConfigs
        log.info("cannot compare topic configs: %s", exc)
        return []
    drift = []
    by_name = {s.name: s for s in specs}
    for response in results:
        for resource in getattr(response, "resources", []):
            name, entries = resource[3], resource[4]
            spec = by_name.get(name)
            if spec is None:
                continue
            actual = {e[0]: e[1] for e in entries}
            for key, want in spec.topic_configs().items():
                if key in actual and actual[key] != want:
                    drift.append(f"{name}: {key}={actual[key]}, table says {want}")
    return drift
