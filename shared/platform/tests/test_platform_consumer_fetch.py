"""What one fetch of the platform consumer takes: a transaction's worth of records from each
partition, no more than a bounded number in all, every partition in turn (no Kafka: the
consumer client is a stand-in holding buffered records, as aiokafka's fetcher does)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from crm_platform.consumer import ConsumerConfig, EventConsumer
from crm_platform.mongo import Store, connect
from crm_platform.settings import ServiceSettings

TOPIC = "crm.test.fetch"
PARTITIONS = [TopicPartition(TOPIC, p) for p in range(6)]


class Buffered:
    """aiokafka's ``getmany`` over records already fetched: per partition, in offset order."""

    def __init__(self, per_partition: int) -> None:
        self.buffered = {tp: list(range(per_partition)) for tp in PARTITIONS}

    def assignment(self) -> set[TopicPartition]:
        return set(PARTITIONS)

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        for tp in partitions or [tp for tp in PARTITIONS if self.buffered[tp]][:1]:
            offsets, self.buffered[tp] = self.buffered[tp][:max_records], self.buffered[tp][max_records:]
            if offsets:
                return {
                    tp: [
                        ConsumerRecord(TOPIC, tp.partition, o, 0, 0, b"k", b"v", None, 1, 1, ())
                        for o in offsets
                    ]
                }
        return {}


def _consumer(**config: Any) -> EventConsumer:
    store = Store(connect("mongodb://127.0.0.1:1", "test"), "unused", "test")  # never connects here
    consumer = EventConsumer(
        ConsumerConfig(service="test", group_id="test", topics=[TOPIC], bootstrap="-", **config), store, {}
    )
    return consumer


def test_a_fetch_takes_up_to_a_transactions_worth_per_partition_and_a_bound_in_all() -> None:
    consumer = _consumer()
    kafka = Buffered(per_partition=1000)
    consumer.consumer = kafka
    served: Counter[int] = Counter()

    async def fetches() -> list[dict[TopicPartition, list[Any]]]:
        return [await consumer._fetch() for _ in range(6)]

    for batch in asyncio.run(fetches()):
        assert sum(len(records) for records in batch.values()) <= 750, "in flight at once: bounded"
        assert all(len(records) <= 250 for records in batch.values()), "one transaction per partition"
        assert max(len(records) for records in batch.values()) == 250
        served.update(tp.partition for tp in batch)
    assert set(served) == {tp.partition for tp in PARTITIONS}, "every partition in turn, none left behind"
    for tp in PARTITIONS:  # each partition's records still come in offset order, none skipped
        assert kafka.buffered[tp] == list(range(1000 - len(kafka.buffered[tp]), 1000))


def test_the_services_take_250_records_per_partition_and_750_per_fetch_by_default() -> None:
    settings = ServiceSettings.model_validate(
        {
            "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
            "MONGODB_URI": "mongodb://127.0.0.1:1",
            "CRM_SERVICE_NAME": "x",
        }
    )
    assert (settings.consumer_max_records, settings.consumer_max_fetch_records) == (250, 750)
    config = ConsumerConfig(service="x", group_id="x", topics=[], bootstrap="-")
    assert (config.max_records, config.max_fetch_records) == (250, 750)


class _Made:
    """What ``make_consumer`` / ``make_producer`` give the consumer here: clients that start."""

    def __init__(self, made: list[Any]) -> None:
        self._client = type("Client", (), {})()
        made.append(self)

    def subscribe(self, topics: list[str], listener: Any = None) -> None:
        self.listener = listener

    async def start(self) -> None:
        pass


def _connected(monkeypatch: Any, **config: Any) -> Any:
    from crm_platform import consumer as consumer_module

    made: list[Any] = []
    monkeypatch.setattr(consumer_module, "make_consumer", lambda **kw: _Made(made))
    monkeypatch.setattr(consumer_module, "make_producer", lambda *a, **kw: _Made([]))
    asyncio.run(_consumer(**config)._connect())
    [kafka] = made
    return kafka


def test_a_patient_consumer_marks_its_kafka_client_patient(monkeypatch: Any) -> None:
    """``patient``: no one waits on its records within a second, so once idle it takes the
    patient pause (crm_platform.kafka.be_patient); a consumer is not patient by default (a
    department's, on a handoff's path)."""
    assert getattr(_connected(monkeypatch, patient=True)._client, "_crm_patient", False) is True
    assert getattr(_connected(monkeypatch)._client, "_crm_patient", False) is False


def test_the_person_keys_consumer_is_patient_until_records_and_the_departments_is_not() -> None:
    """A key is published with the events sealed with it: the key consumer is patient once idle
    and its pause ends when the department's consumer fetches records (kafka.be_patient's
    ``until_records``); the department's consumer, on the handoff's path, keeps the idle pause."""
    from crm_platform.runtime import ServiceRuntime, Subscription
    from crm_platform.testing import OFFLINE_SETTINGS

    settings = ServiceSettings.model_validate({**OFFLINE_SETTINGS, "CRM_SERVICE_NAME": "sales"})
    subscription = Subscription(topics=[TOPIC], handlers={}, department="sales")
    runtime = ServiceRuntime(settings, subscription=subscription)
    assert runtime.key_consumer is not None
    assert runtime.consumer is not None
    assert runtime.key_consumer.config.patient_until_records is True
    assert not runtime.consumer.config.patient
    assert not runtime.consumer.config.patient_until_records


def test_a_consumer_patient_until_records_marks_its_kafka_client(monkeypatch: Any) -> None:
    kafka = _connected(monkeypatch, patient_until_records=True)
    assert kafka._client._crm_patient is True
    assert kafka._client._crm_until_records is True


class Waiting:
    """aiokafka's ``getmany`` waiting for records that do not come: its fetcher's own wait
    (``Fetcher.fetched_records``: a fetch waiter, ``asyncio.wait`` with the timeout) over nothing
    buffered."""

    def __init__(self) -> None:
        from aiokafka.consumer.fetcher import Fetcher

        self.fetcher = Fetcher.__new__(Fetcher)
        self.fetcher._loop = asyncio.get_running_loop()
        self.fetcher._fetch_waiters = set()
        self.fetcher._records = {}
        self.fetcher._closed = False
        self.fetcher._subscriptions = type("Subscriptions", (), {"reassignment_in_progress": False})()
        self._fetcher = self.fetcher
        self.timeouts_ms: list[float] = []

    def assignment(self) -> set[TopicPartition]:
        return set(PARTITIONS)

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: float = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Any]]:
        self.timeouts_ms.append(timeout_ms)
        result: dict[TopicPartition, list[Any]] = await self.fetcher.fetched_records(
            partitions, timeout_ms / 1000, max_records
        )
        return result


async def _waiting_fetch(monkeypatch: Any) -> tuple[EventConsumer, Waiting, asyncio.Task[Any]]:
    from crm_platform import consumer as consumer_module

    # A wait for records that would last an hour: only the consumer's own wake can end it here.
    monkeypatch.setattr(consumer_module, "wait_for_records_ms", lambda: 3_600_000)
    consumer = _consumer()
    kafka = Waiting()
    consumer.consumer = kafka
    fetch = asyncio.create_task(consumer._fetch())
    while not kafka.fetcher._fetch_waiters:
        await asyncio.sleep(0)
    return consumer, kafka, fetch


def test_a_stop_ends_the_consumers_wait_for_records_at_once(monkeypatch: Any) -> None:
    """The loop's ``getmany`` waits about a second for records (not 200 ms: five wake-ups a second
    of an idle consumer); a stop must not wait for its end: it ends the wait, as no records."""

    async def scenario() -> tuple[bool, Any]:
        consumer, _, fetch = await _waiting_fetch(monkeypatch)
        await consumer.stop()
        done, _ = await asyncio.wait([fetch], timeout=60)  # a guard against a hang, not a timing
        return fetch in done, fetch.result() if fetch in done else None

    ended, batches = asyncio.run(scenario())
    assert ended, "the wait for records ran on after the stop"
    assert batches == {}


def test_a_lanes_failure_ends_the_consumers_wait_for_records(monkeypatch: Any) -> None:
    """A batch that fails ends the loop (a reconnect): the loop sees it at once, not after the
    wait for records runs out."""
    from crm_platform.consumer import _Lanes

    async def scenario() -> tuple[bool, Any]:
        consumer, _, fetch = await _waiting_fetch(monkeypatch)

        async def fails(tp: TopicPartition, records: list[Any]) -> None:
            raise RuntimeError("the store went away")

        lanes = _Lanes(fails, 250, asyncio.Event(), on_failure=consumer._wake_fetch)
        lanes.add(PARTITIONS[0], [object()])
        done, _ = await asyncio.wait([fetch], timeout=60)  # a guard against a hang, not a timing
        await lanes.ended()
        return fetch in done, lanes.failure

    ended, failure = asyncio.run(scenario())
    assert ended, "the wait for records ran on after a lane failed"
    assert isinstance(failure, RuntimeError)


def test_the_wait_for_records_is_about_a_second_and_ends_on_the_wake_up_grid() -> None:
    from crm_platform.kafka import RECORDS_WAIT_SECONDS
    from crm_platform.wakeups import WAKE_GRID_SECONDS, on_grid

    async def scenario() -> tuple[float, float]:
        consumer = _consumer()
        kafka = Waiting()
        consumer.consumer = kafka
        loop = asyncio.get_running_loop()
        now = loop.time()
        await consumer._fetch()  # nothing comes: the wait runs out
        return now, kafka.timeouts_ms[0]

    now, timeout_ms = asyncio.run(scenario())
    assert abs(timeout_ms / 1000 - RECORDS_WAIT_SECONDS) <= WAKE_GRID_SECONDS / 2 + 0.01
    end = now + timeout_ms / 1000
    assert abs(end / WAKE_GRID_SECONDS - round(end / WAKE_GRID_SECONDS)) < 0.05  # on the grid (to the ms)
    assert on_grid(now, RECORDS_WAIT_SECONDS) >= now + WAKE_GRID_SECONDS / 2


def test_a_services_consumers_gather_their_offset_commits_by_default(
    monkeypatch: Any,
) -> None:
    """The department's consumer and the key consumer commit a batch's offsets with those of the
    batches ended within 0.2 s (CRM_CONSUMER_COMMIT_GATHER_SECONDS), not one commit per batch, and
    subscribe with the listener that commits them before a rebalance takes partitions away; a
    consumer configured by hand commits at once."""
    from crm_platform.consumer import _CommitsFirst
    from crm_platform.runtime import ServiceRuntime, Subscription
    from crm_platform.testing import OFFLINE_SETTINGS

    settings = ServiceSettings.model_validate({**OFFLINE_SETTINGS, "CRM_SERVICE_NAME": "sales"})
    runtime = ServiceRuntime(
        settings, subscription=Subscription(topics=[TOPIC], handlers={}, department="sales")
    )
    assert runtime.consumer is not None
    assert runtime.key_consumer is not None
    assert runtime.consumer.config.commit_gather_seconds == 0.2
    assert runtime.key_consumer.config.commit_gather_seconds == 0.2
    assert ConsumerConfig(service="x", group_id="x", topics=[], bootstrap="-").commit_gather_seconds == 0
    assert not isinstance(_connected(monkeypatch).listener, _CommitsFirst)
    assert isinstance(_connected(monkeypatch, commit_gather_seconds=0.2).listener, _CommitsFirst)
