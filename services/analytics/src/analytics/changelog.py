"""The tables' changelog, written behind the folds: once per changed key per batch.

faust writes a table's changelog on every assignment (``table[key] = value`` sends one record
through its producer buffer, a ``FutureMessage`` and a produce call each). The worker's tables
(:class:`WriteBehindTable`) only note which keys changed; :meth:`ChangelogWriter.flush` then
takes every noted key of every table at once, reads its current value and hands the records to
a sender task that puts them on the changelog topics as one record batch per partition
(aiokafka's ``create_batch``/``send_batch``: no future per record). A key changed by several
events between two flushes is written once, with its latest value.

What stays as faust had it: the topics (``<app id>-<table>-changelog``), the partition of each
key (faust's ``use_partitioner``: the producer's partitioner on the serialized key, through
faust's own ``key_partition``), the serialized key (the table's key codec), a deleted key's
tombstone, and recovery (faust reads the changelog back as before). The values are compact
JSON, which faust's JSON codec reads (a fact object as its ``to_json`` document:
``analytics.domain.facts.stored_json``).

Order: flushes are sent one after another in the order they were taken, so a later value of a
key never lands before an earlier one. :meth:`~ChangelogWriter.flush` is synchronous: what it
takes is exactly what was folded before the call (the confirmer calls it at the moment it takes
its events). If sending fails, the keys of that flush are noted again (the next flush writes
their current values) and the flush's future raises: the events it covered are never acked.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import Any, cast

import faust
from aiokafka.partitioner import DefaultPartitioner
from crm_platform.kafka import murmur2_many
from faust.stores.memory import Store as MemoryStore
from pydantic_core import to_json

from analytics.domain.facts import stored_json

SET = 1
DELETE = 2


class WriteBehindTable(faust.Table):
    """A faust table that notes changed keys instead of sending each change (module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dirty: dict[Any, int] = {}

    def get(self, key: Any, default: Any = None) -> Any:
        """The value of ``key``: one lookup in the in-memory store's dict. faust's own goes
        through ``Mapping.get``, the table's ``__getitem__`` (a get sensor), the store's mapping
        protocol and, for a key not there yet (every new lead of a replay), a ``KeyError``
        (5% of the replaying worker's samples). These tables have no default factory; another
        store kind is read as faust reads it."""
        store = self.data
        if isinstance(store, MemoryStore):
            return store.data.get(key, default)
        return super().get(key, default)

    def __setitem__(self, key: Any, value: Any) -> None:
        """Note the key and store the value: for the in-memory store one dict assignment (faust's
        goes through ``ManagedUserDict.__setitem__`` and the store's mapping protocol, one to two
        sets per folded event); another store kind is written as faust writes it."""
        store = self.data
        if isinstance(store, MemoryStore):
            self.dirty[key] = SET
            store.data[key] = value
        else:
            super().__setitem__(key, value)

    def on_key_set(self, key: Any, value: Any) -> None:
        self.dirty[key] = SET

    def on_key_del(self, key: Any) -> None:
        self.dirty[key] = DELETE

    def take_dirty(self) -> dict[Any, int]:
        dirty, self.dirty = self.dirty, {}
        return dirty

    def note_again(self, keys: Iterable[Any]) -> None:
        """A failed flush's keys: the next flush writes their current values."""
        for key in keys:
            self.dirty.setdefault(key, SET if key in self.data else DELETE)


@dataclass
class _Flush:
    # (table, key, changelog topic, serialized key, serialized value or None for a tombstone)
    records: list[tuple[WriteBehindTable, Any, str, bytes, bytes | None]]
    done: asyncio.Future[None]


class ChangelogWriter:
    """Sends the noted keys of ``tables`` to their changelogs, one batch per partition (module doc)."""

    def __init__(self, app: faust.App, tables: Iterable[WriteBehindTable]) -> None:
        self.app = app
        self.tables = list(tables)
        self._queue: deque[_Flush] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._known_topics: set[str] = set()
        self._tail: asyncio.Future[None] | None = None  # the latest flush's
        self.records_sent = 0  # diagnostics and tests

    def flush(self) -> asyncio.Future[None]:
        """Take every noted key now; the future is done once their records are stored, and
        every record of an earlier flush too (an earlier flush, e.g. the reconciliation's, may
        have taken keys the caller's events changed)."""
        records = list(self._collect())
        if not records:
            if self._tail is not None and not self._tail.done():
                return self._tail
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        flush = _Flush(records, asyncio.get_running_loop().create_future())
        self._queue.append(flush)
        self._tail = flush.done
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())
        return flush.done

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _collect(self) -> Iterable[tuple[WriteBehindTable, Any, str, bytes, bytes | None]]:
        for table in self.tables:
            if not table.dirty:
                continue
            topic = table.changelog_topic.get_topic_name()
            dumps_key = self._key_dumper(table)
            # The in-memory store's dict read directly (WriteBehindTable.get, one lookup a key).
            store = table.data
            get = store.data.get if isinstance(store, MemoryStore) else table.get
            for key, change in table.take_dirty().items():
                value = get(key)
                if value is None and change == SET:
                    continue  # gone since (a recovery dropped a partition it no longer holds)
                raw = None if value is None else to_json(stored_json(value))
                yield table, key, topic, dumps_key(key), raw

    def _key_dumper(self, table: WriteBehindTable) -> Callable[[Any], bytes]:
        """The table's key codec: faust's ``dumps_key``, or for a ``str`` key under faust's
        ``json`` codec the same bytes straight from the stdlib's C string encoder (faust's goes
        through its codec registry and builds a ``JSONEncoder`` per key: 4% of the replaying
        worker). Taken only when faust's own output for a probe (quotes, non-ASCII) is equal."""
        dumps_key = self.app.serializers.dumps_key

        def faust_key(key: Any) -> bytes:
            raw = dumps_key(table.key_type, key, serializer=table.key_serializer)
            assert raw is not None
            return raw

        def json_key(key: Any) -> bytes:
            if type(key) is str:
                return encode_basestring_ascii(key).encode("ascii")
            return faust_key(key)

        probe = 'lead:\u00e9"\\\n\u2028-1'
        same = table.key_serializer == "json" and json_key(probe) == faust_key(probe)
        return json_key if same else faust_key

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                flush = self._queue[0]
                try:
                    await asyncio.gather(*await self._send(flush.records))
                except Exception as exc:  # noqa: BLE001 - raised to whoever waits for a flush
                    self._fail_queued(exc)
                else:
                    self._queue.popleft()
                    self.records_sent += len(flush.records)
                    if not flush.done.done():
                        flush.done.set_result(None)

    def _fail_queued(self, exc: BaseException) -> None:
        """A flush failed: it and every flush queued behind it (whose futures promise the earlier
        ones too) fail, and their keys are noted again for the next flush."""
        while self._queue:
            flush = self._queue.popleft()
            for table, key, *_ in flush.records:
                table.note_again([key])
            if not flush.done.done():
                flush.done.set_exception(exc)
                flush.done.exception()  # retrieved: whoever waits for it gets it raised anyway

    def _partitions(self, producer: Any, topic: str, raw_keys: list[bytes]) -> list[int]:
        """The partition of each key of ``topic``, as faust's ``key_partition`` gives it (the
        producer's partitioner over the topic's partitions); when the partitioner is aiokafka's
        default, Kafka's murmur2 of a flush's keys computed together (``murmur2_many``: aiokafka's
        own is per byte, 13 of 25 us per key; one key at a time a word at a time, 3 us, was 5% of
        the replaying worker's samples)."""
        if type(producer._partitioner) is not DefaultPartitioner:
            key_partition = self.app.producer.key_partition
            return [int(key_partition(topic, raw_key).partition) for raw_key in raw_keys]
        partitions = list(producer._metadata.partitions_for_topic(topic))
        count = len(partitions)
        return [int(partitions[(h & 0x7FFFFFFF) % count]) for h in murmur2_many(raw_keys)]

    async def _send(
        self, records: list[tuple[WriteBehindTable, Any, str, bytes, bytes | None]]
    ) -> list[asyncio.Future[Any]]:
        """One record batch per changelog partition (more when one fills up)."""
        producer = cast(Any, self.app.producer)._ensure_producer()  # faust's aiokafka producer
        for topic in {r[2] for r in records} - self._known_topics:
            await producer.partitions_for(topic)  # metadata, for the partitioner
            self._known_topics.add(topic)
        by_topic: dict[str, list[tuple[bytes, bytes | None]]] = {}
        for _table, _key, topic, raw_key, raw in records:
            by_topic.setdefault(topic, []).append((raw_key, raw))
        by_tp: dict[tuple[str, int], list[tuple[bytes, bytes | None]]] = {}
        for topic, pairs in by_topic.items():  # each partition's records in the flush's order
            partitions = self._partitions(producer, topic, [raw_key for raw_key, _ in pairs])
            for pair, partition in zip(pairs, partitions, strict=True):
                by_tp.setdefault((topic, partition), []).append(pair)
        futures: list[asyncio.Future[Any]] = []
        for (topic, partition), pairs in by_tp.items():
            batch = producer.create_batch()
            for raw_key, raw in pairs:
                if batch.append(key=raw_key, value=raw, timestamp=None) is None:
                    futures.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    if batch.append(key=raw_key, value=raw, timestamp=None) is None:
                        raise ValueError(f"a changelog record of {len(raw or b'')} bytes fits no batch")
            futures.append(await producer.send_batch(batch, topic, partition=partition))
        return futures
