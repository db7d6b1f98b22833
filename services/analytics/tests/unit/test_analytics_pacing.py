"""The worker's fetch pacing (analytics.worker.pace_consumers), without a broker."""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any, cast

import pytest
from analytics import worker
from analytics.settings import AnalyticsSettings
from analytics.worker import pace_consumers
from crm_platform import kafka as kafka_module


def test_the_workers_consumers_are_patient_once_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its figures are written once a second: once idle, faust's consumer fetches every half
    second on a broker that answers empty fetches at once, not every idle pause."""
    for name in ("_empty_fetch_pause", "_fetch_interval", "_patient_process"):
        monkeypatch.setattr(kafka_module, name, getattr(kafka_module, name))
    settings = AnalyticsSettings(
        KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9",
        MONGODB_URI="mongodb://127.0.0.1:9",
        CRM_CONSUMER_IDLE_BACKOFF_MS=20,
    )
    pace_consumers(settings)
    assert kafka_module._empty_fetch_pause == pytest.approx(0.02)
    assert kafka_module._patient_process is True
    idle = kafka_module.wait_after_fetch(False, 0.001, 10_000, patient=kafka_module._patient_process)
    assert idle == kafka_module.PATIENT_IDLE_PAUSE_SECONDS


def test_a_fetch_that_brought_records_starts_the_next_half_a_second_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The figures are published once a second: live events are fetched twice a second, not ten
    times (a fetch names all 84 source partitions; at 25 handoffs/s the worker spent about 2 ms of
    CPU per handoff on fetch rounds at 100 ms, 1 ms at 500). A fetch that took longer waits for
    nothing (a replay's or a backlog's)."""
    for name in ("_empty_fetch_pause", "_fetch_interval", "_patient_process"):
        monkeypatch.setattr(kafka_module, name, getattr(kafka_module, name))
    settings = AnalyticsSettings(KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9", MONGODB_URI="mongodb://127.0.0.1:9")
    pace_consumers(settings)
    assert kafka_module.wait_after_fetch(True, 0.01, 0) == pytest.approx(0.49)
    assert kafka_module.wait_after_fetch(True, 0.6, 0) == 0.0


@pytest.mark.parametrize(("idle_backoff_ms", "spilled"), [(20, True), (0, False)])
def test_the_worker_keeps_large_fetched_partitions_in_a_file_on_the_embedded_broker(
    monkeypatch: pytest.MonkeyPatch, idle_backoff_ms: int, spilled: bool
) -> None:
    """The embedded broker sends a partition's whole remainder per fetch (a replay's whole log):
    crm_platform.fetch_spill keeps it out of memory. Against Kafka (no idle backoff) nothing."""
    for name in ("_empty_fetch_pause", "_fetch_interval", "_patient_process"):
        monkeypatch.setattr(kafka_module, name, getattr(kafka_module, name))
    calls: list[str] = []
    monkeypatch.setattr(worker, "spill_large_fetches", lambda: calls.append("spill"))
    settings = AnalyticsSettings(
        KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9",
        MONGODB_URI="mongodb://127.0.0.1:9",
        CRM_CONSUMER_IDLE_BACKOFF_MS=idle_backoff_ms,
    )
    pace_consumers(settings)
    assert (calls == ["spill"]) is spilled


def test_a_poll_hands_over_a_bounded_number_of_records() -> None:
    """faust's default (no bound) handed a replay's whole fetched log over in one poll: every
    record decoded at once (the worker's peak; docs/performance.md, fifteenth session, memory)."""
    settings = AnalyticsSettings(
        KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9",
        MONGODB_URI="mongodb://127.0.0.1:9",
        CRM_ANALYTICS_APP_ID=f"crm-analytics-poll-{uuid.uuid4().hex[:8]}",
    )
    app = worker.build_faust_app(settings)
    assert app.conf.broker_max_poll_records == worker.MAX_POLL_RECORDS
    assert worker.FOLD_CHUNK <= worker.MAX_POLL_RECORDS <= 20_000


async def test_the_changelogs_batches_leave_the_worker_compressed() -> None:
    """The changelog's record batches are built by the worker's own producer
    (analytics.changelog): zstd, as the outbox relays send theirs (uncompressed, the two
    changelogs kept 330 bytes per folded lead on the broker, whose CPU follows the bytes)."""
    settings = AnalyticsSettings(
        KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9",
        MONGODB_URI="mongodb://127.0.0.1:9",
        CRM_ANALYTICS_APP_ID=f"crm-analytics-codec-{uuid.uuid4().hex[:8]}",
    )
    app = worker.build_faust_app(settings)
    producer = cast(Any, app.producer)._new_producer()  # faust's aiokafka producer, not started
    batch = producer.create_batch()
    value = b'{"captured_at":1765000000.0,"channel":"web_form","campaign":null,"merged":false}'
    plain = 0
    for n in range(100):
        key = f'"lead:{n:032x}"'.encode()
        assert batch.append(key=key, value=value, timestamp=None) is not None
        plain += len(key) + len(value)
    built = bytes(batch._build())  # what the producer sends
    zstd = 4  # the record batch's attributes (bytes 21-22): codec in the low three bits
    assert built[22] & 0x07 == zstd
    assert len(built) < plain / 3


def test_fausts_fetch_routine_times_out_as_the_services_consumers_do(monkeypatch: pytest.MonkeyPatch) -> None:
    """faust makes its aiokafka consumer with aiokafka's 200 ms ``consumer_timeout_ms``: five
    wake-ups a second of an idle worker for nothing; its routine times out as the services' do."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    class Made:  # what faust's consumer thread builds, as far as the routine's timeout goes
        _consumer_timeout = 0.2  # aiokafka's default consumer_timeout_ms

    def faust_made(self: Any, transport: Any) -> Any:
        return Made()

    monkeypatch.setattr(AIOKafkaConsumerThread, "_create_worker_consumer", faust_made)
    monkeypatch.setattr(AIOKafkaConsumerThread, "_crm_quiet", False, raising=False)
    worker.quiet_fetch_routine()
    worker.quiet_fetch_routine()  # idempotent
    consumer = AIOKafkaConsumerThread._create_worker_consumer(cast(Any, None), cast(Any, None))
    assert consumer._consumer_timeout == kafka_module.FETCH_ROUTINE_TIMEOUT_MS / 1000 == 5.0


async def test_fausts_livelock_check_skips_a_partition_awaiting_its_position(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """faust's livelock check reads each assigned partition's position, which aiokafka asserts
    is set: a partition awaiting an offset reset (its records deleted below its offset) made it
    raise and crashed the worker. Such a partition is skipped; one with a position is checked."""
    from aiokafka.consumer.subscription_state import TopicPartitionState
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
    from faust.types import TP

    awaiting, placed = TopicPartitionState(None), TopicPartitionState(None)
    placed.reset_to(42)
    states = {0: awaiting, 1: placed}
    checked: list[Any] = []

    def fausts_check(self: Any, now: float, tp: Any) -> None:  # as far as it reads the position
        checked.append(tp)
        assert states[tp.partition].position >= 0

    assignment = SimpleNamespace(state_value=lambda tp: states[tp.partition])
    subscriptions = SimpleNamespace(subscription=SimpleNamespace(assignment=assignment))
    thread = cast(
        Any,
        SimpleNamespace(_consumer=SimpleNamespace(_fetcher=SimpleNamespace(_subscriptions=subscriptions))),
    )
    with pytest.raises(AssertionError):
        fausts_check(thread, 0.0, TP("t", 0))  # what crashed the worker
    checked.clear()
    monkeypatch.setattr(AIOKafkaConsumerThread, "verify_event_path", fausts_check)
    monkeypatch.setattr(AIOKafkaConsumerThread, "_crm_unset_skipped", False, raising=False)
    worker.unset_positions_not_verified()
    worker.unset_positions_not_verified()  # idempotent
    AIOKafkaConsumerThread.verify_event_path(thread, 0.0, TP("t", 0))
    AIOKafkaConsumerThread.verify_event_path(thread, 0.0, TP("t", 1))
    assert checked == [TP("t", 1)]
