"""The tables' changelog written behind the folds (analytics.changelog), without a broker: the
worker's real tables, the sending replaced by a recorder."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from analytics.changelog import DELETE, SET
from analytics.settings import AnalyticsSettings
from analytics.worker import AnalyticsWorker


def make_worker() -> AnalyticsWorker:
    return AnalyticsWorker(
        AnalyticsSettings(
            KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9",
            MONGODB_URI="mongodb://127.0.0.1:9",
            CRM_ANALYTICS_APP_ID=f"crm-analytics-unit-{uuid.uuid4().hex[:8]}",
        )
    )


class Recorder:
    """Stands in for the producer: records each flush's records; a send waits for ``gate``."""

    def __init__(self) -> None:
        self.sent: list[list[tuple[str, bytes, bytes | None]]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: Exception | None = None

    async def send(self, records: list[Any]) -> list[asyncio.Future[Any]]:
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        self.sent.append([(topic, key, value) for _table, _key, topic, key, value in records])
        return []


@pytest.fixture
def worker(monkeypatch) -> tuple[AnalyticsWorker, Recorder]:
    w = make_worker()
    recorder = Recorder()
    monkeypatch.setattr(w.changelog, "_send", recorder.send)
    return w, recorder


async def test_a_key_changed_by_several_folds_is_written_once_with_its_latest_value(worker) -> None:
    w, recorder = worker
    leads = w.tables["leads"]
    leads["a"] = {"captured_at": 1.0}
    leads["a"] = {"captured_at": 1.0, "qualified": [2.0]}
    leads["b"] = {"captured_at": 3.0}
    del leads["b"]
    await w.changelog.flush()
    [records] = recorder.sent
    topic = leads.changelog_topic.get_topic_name()
    assert records == [
        (topic, b'"a"', b'{"captured_at":1.0,"qualified":[2.0]}'),
        (topic, b'"b"', None),  # deleted: a tombstone
    ]
    assert leads.dirty == {}
    await w.changelog.flush()  # nothing changed since: nothing sent
    assert len(recorder.sent) == 1


async def test_a_flush_with_nothing_of_its_own_waits_for_the_earlier_flushes(worker) -> None:
    """The reconciliation's flush may take keys the agent's events changed: the confirmer's
    next flush, empty, must not be done before that one is stored."""
    w, recorder = worker
    recorder.gate.clear()
    w.tables["deals"]["d"] = {"won_at": 1.0}
    earlier = w.changelog.flush()
    later = w.changelog.flush()
    await asyncio.sleep(0.01)
    assert not later.done()
    recorder.gate.set()
    await later
    assert earlier.done()


async def test_a_failed_flush_fails_the_queued_ones_and_its_keys_are_written_next_time(worker) -> None:
    w, recorder = worker
    receipts = w.tables["receipts"]
    recorder.gate.clear()
    receipts["r1"] = {"handoff": "lead-qualified", "latency": 0.1}
    first = w.changelog.flush()
    receipts["r2"] = {"handoff": "lead-qualified", "latency": 0.2}
    second = w.changelog.flush()
    recorder.fail = ConnectionError("broker away")
    recorder.gate.set()
    for flush in (first, second):
        with pytest.raises(ConnectionError):
            await flush
    assert set(receipts.dirty) == {"r1", "r2"}
    recorder.fail = None
    await w.changelog.flush()
    assert sorted(key for _topic, key, _value in recorder.sent[-1]) == [b'"r1"', b'"r2"']
    await w.changelog.stop()


def test_a_key_goes_to_the_partition_faust_and_aiokafka_give_it() -> None:
    """The word-at-a-time murmur2 and the many-keys-together one are Kafka's (aiokafka's per-byte
    one), and the writer's partition of each key of a flush is what faust's ``key_partition``
    (aiokafka's producer) gives: a key written before this change lands in the same changelog
    partition, where compaction and recovery find it."""
    import os
    import random
    from types import SimpleNamespace

    from aiokafka.partitioner import DefaultPartitioner
    from aiokafka.partitioner import murmur2 as aiokafka_murmur2
    from aiokafka.producer.producer import AIOKafkaProducer
    from crm_platform.kafka import murmur2, murmur2_many

    rng = random.Random(7)
    for length in range(0, 70):
        keys = []
        for _ in range(20):
            data = os.urandom(length) if rng.random() < 0.5 else f'"{uuid.uuid4()}"'.encode()[:length]
            assert murmur2(data) == aiokafka_murmur2(data), data
            keys.append(data)
        assert murmur2_many(keys) == [aiokafka_murmur2(k) for k in keys], length
        assert murmur2_many(keys[:3]) == [aiokafka_murmur2(k) for k in keys[:3]]
    mixed = [os.urandom(rng.randrange(0, 50)) for _ in range(3000)]
    assert murmur2_many(mixed) == [aiokafka_murmur2(k) for k in mixed], "lengths mixed, order kept"
    partitions = {0, 1, 2, 3, 4, 5}
    metadata = SimpleNamespace(
        partitions_for_topic=lambda topic: partitions, available_partitions_for_topic=lambda topic: partitions
    )
    producer: Any = SimpleNamespace(_partitioner=DefaultPartitioner(), _metadata=metadata)
    keys = [f'"lead-{n}-{uuid.uuid4()}"'.encode() for n in range(2000)] + [
        f'"{uuid.uuid4()}"'.encode() for _ in range(500)
    ]
    faust_s = [
        AIOKafkaProducer._partition(producer, "t-changelog", None, None, None, key, None) for key in keys
    ]
    assert make_worker().changelog._partitions(producer, "t-changelog", keys) == faust_s


def test_a_table_get_is_one_lookup_in_the_store(monkeypatch) -> None:
    """``table.get`` reads the in-memory store's dict: the value faust's ``table[key]`` gives, the
    default for a missing key, and neither faust's ``__getitem__`` nor its get sensor on the way."""
    leads = make_worker().tables["leads"]
    leads["a"] = {"captured_at": 1.0}
    assert leads.get("a") == leads["a"] == {"captured_at": 1.0}
    through_faust: list[Any] = []
    monkeypatch.setattr(type(leads), "on_key_get", lambda self, key: through_faust.append(key))
    assert leads.get("a") == {"captured_at": 1.0}
    assert leads.get("missing") is None
    assert leads.get("missing", {}) == {}
    assert through_faust == []


def test_a_table_set_is_one_assignment_in_the_store_and_the_key_is_noted(monkeypatch) -> None:
    """``table[key] = value`` stores into the in-memory store's dict and notes the key for the next
    flush, as faust's ``__setitem__`` with ``on_key_set`` did, without its mapping protocol."""
    leads = make_worker().tables["leads"]
    through_store: list[Any] = []
    store = type(leads.data)
    monkeypatch.setattr(store, "__setitem__", lambda self, key, value: through_store.append(key))
    leads["a"] = {"captured_at": 1.0}
    leads["a"] = {"captured_at": 2.0}
    assert leads.get("a") == leads["a"] == {"captured_at": 2.0}
    assert leads.take_dirty() == {"a": SET}
    del leads["a"]
    assert leads.get("a") is None
    assert leads.take_dirty() == {"a": DELETE}
    assert through_store == []


async def test_a_key_is_written_as_faust_serializes_it_without_its_codec_per_key(worker, monkeypatch) -> None:
    """The changelog's keys are the bytes faust's ``dumps_key`` gives (its ``json`` key codec),
    made by the stdlib's string encoder: faust's registry is not called once per key."""
    w, recorder = worker
    leads = w.tables["leads"]
    keys = ["lead-1", 'q"uote', "back\\slash", "new\nline", "caf\u00e9", "\u2028\U0001f600", ""]
    expected = [w.app.serializers.dumps_key(leads.key_type, k, serializer=leads.key_serializer) for k in keys]
    calls: list[Any] = []
    dumps_key = w.app.serializers.dumps_key

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return dumps_key(*args, **kwargs)

    monkeypatch.setattr(w.app.serializers, "dumps_key", counting)
    for n, key in enumerate(keys):
        leads[key] = {"captured_at": float(n)}
    await w.changelog.flush()
    [records] = recorder.sent
    assert [key for _topic, key, _value in records] == expected
    assert len(calls) <= 1  # the probe, once per flush of the table: never per key
