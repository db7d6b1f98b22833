"""Empty-fetch pacing's pure pieces (``crm_platform.kafka``): the pause a component asked for and
the longer pause of an idle consumer. The paced consumer on the real broker is tested in
``tests/reliability/test_empty_fetch_pacing.py``."""

from __future__ import annotations

import asyncio
import collections
import struct
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.client import ConnectionGroup
from aiokafka.conn import AIOKafkaConnection
from aiokafka.consumer.fetcher import Fetcher
from aiokafka.protocol.fetch import FetchRequest, FetchResponse_v11
from crm_platform import kafka as kafka_module
from crm_platform import wakeups
from crm_platform.kafka import pace_empty_fetches
from crm_platform.testing import timers_asked


def test_zero_leaves_the_pause_another_component_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka_module, "_empty_fetch_pause", kafka_module._empty_fetch_pause)
    pace_empty_fetches(30)
    pace_empty_fetches(0)  # e.g. a component configured for a real cluster
    assert kafka_module._empty_fetch_pause == pytest.approx(0.03)


def test_a_consumer_idle_for_a_second_pauses_longer_and_resumes_at_once() -> None:
    pause = 0.02
    # Traffic flowing (streaks of a few empty fetches): the plain pause.
    assert kafka_module.pause_after(1, pause) == pause
    assert kafka_module.pause_after(49, pause) == pause
    # A second of nothing: the idle pause.
    idle = pause * kafka_module.IDLE_PAUSE_FACTOR
    assert kafka_module.pause_after(50, pause) == idle
    assert kafka_module.pause_after(10_000, pause) == idle
    # Unpaced (a real broker): never a pause.
    assert kafka_module.pause_after(10_000, 0.0) == 0.0


def test_a_fetch_that_brought_records_waits_out_the_rest_of_the_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kafka_module, "_empty_fetch_pause", 0.02)
    monkeypatch.setattr(kafka_module, "_fetch_interval", 0.0)
    assert kafka_module.wait_after_fetch(True, 0.001, 0) == 0.0  # unpaced: the next fetch at once
    assert kafka_module.wait_after_fetch(False, 0.001, 1) == pytest.approx(0.02)  # empty: its own pause
    monkeypatch.setattr(kafka_module, "_fetch_interval", 0.1)
    assert kafka_module.wait_after_fetch(True, 0.03, 0) == pytest.approx(0.07)
    assert kafka_module.wait_after_fetch(True, 0.25, 0) == 0.0  # a long fetch (a replay): no wait
    assert kafka_module.wait_after_fetch(False, 0.001, 1) == pytest.approx(0.02)


def test_fetch_pacing_zero_leaves_the_interval_another_component_asked_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kafka_module, "_fetch_interval", kafka_module._fetch_interval)
    kafka_module.pace_fetches(100)
    kafka_module.pace_fetches(0)
    assert kafka_module._fetch_interval == pytest.approx(0.1)


async def test_hurry_fetches_ends_an_empty_fetch_pause() -> None:
    """A sealed event waiting for its key (``EventConsumer._await_keys``) ends the key consumer's
    pause after its last empty fetch: the key is fetched now, not up to a pause later."""
    paused = asyncio.create_task(kafka_module.pause_empty(3600))
    await asyncio.sleep(0)  # the pause begins
    assert kafka_module._pauses
    kafka_module.hurry_fetches()
    await asyncio.wait_for(paused, 10)  # an hour otherwise
    assert not kafka_module._pauses
    await kafka_module.pause_empty(0)  # no hurry: the pause runs out on its own


async def test_a_pause_that_runs_out_costs_what_a_sleep_costs(monkeypatch: pytest.MonkeyPatch) -> None:
    """An idle consumer pauses about ten times a second in every process: a pause that runs out
    takes one timer and as many loop callbacks as ``asyncio.sleep`` (``wait_for`` cancelled,
    awaited and raised besides), and a cancelled pause leaves nothing behind."""
    loop = asyncio.get_running_loop()
    counted: list[str] = []
    for name in ("call_soon", "call_later", "call_at"):
        original = getattr(loop, name)

        def counting(*args: Any, _original: Any = original, _name: str = name, **kwargs: Any) -> Any:
            counted.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(loop, name, counting)
    await asyncio.sleep(0.001)
    slept = len(counted)
    counted.clear()
    await kafka_module.pause_empty(0.001)
    assert len(counted) <= slept, counted
    assert not kafka_module._pauses
    paused = asyncio.create_task(kafka_module.pause_empty(3600))
    await asyncio.sleep(0)
    paused.cancel()
    with pytest.raises(asyncio.CancelledError):
        await paused
    assert not kafka_module._pauses


def test_a_patient_consumer_idle_for_a_second_pauses_half_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """A consumer no one waits on within a second (``be_patient``: a handoff's receipts) fetches
    twice a second once idle, not ten times; while records flow it keeps the plain pause."""
    pause = 0.02
    assert kafka_module.pause_after(49, pause, patient=True) == pause
    assert kafka_module.pause_after(50, pause, patient=True) == kafka_module.PATIENT_IDLE_PAUSE_SECONDS == 0.5
    assert kafka_module.pause_after(10_000, 0.0, patient=True) == 0.0  # unpaced: never a pause
    monkeypatch.setattr(kafka_module, "_empty_fetch_pause", pause)
    assert kafka_module.wait_after_fetch(False, 0.001, 50, patient=True) == 0.5
    assert kafka_module.wait_after_fetch(False, 0.001, 50) == pause * kafka_module.IDLE_PAUSE_FACTOR
    assert kafka_module.wait_after_fetch(True, 0.001, 0, patient=True) == 0.0  # records: no pause


async def test_be_patient_marks_the_client_the_fetcher_reads() -> None:
    consumer = kafka_module.make_consumer(bootstrap_servers="127.0.0.1:9")
    assert not getattr(consumer._client, "_crm_patient", False)
    assert kafka_module.be_patient(consumer) is consumer
    assert consumer._client._crm_patient is True


def test_a_backlogs_fetch_waits_no_longer_than_the_backlog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    """A long interval for a live trickle (the analytics worker's half second) must not slow a
    replay: a fetch that brought a backlog's bytes starts the next one at most
    ``BACKLOG_FETCH_INTERVAL`` after it began."""
    monkeypatch.setattr(kafka_module, "_fetch_interval", 0.5)
    small, big = kafka_module.BACKLOG_FETCH_BYTES - 1, kafka_module.BACKLOG_FETCH_BYTES
    assert kafka_module.wait_after_fetch(True, 0.01, 0, fetched_bytes=small) == pytest.approx(0.49)
    assert kafka_module.wait_after_fetch(True, 0.01, 0, fetched_bytes=big) == pytest.approx(0.09)
    assert kafka_module.wait_after_fetch(True, 0.2, 0, fetched_bytes=big) == 0.0
    monkeypatch.setattr(kafka_module, "_fetch_interval", 0.05)  # shorter than the backlog's: kept
    assert kafka_module.wait_after_fetch(True, 0.01, 0, fetched_bytes=big) == pytest.approx(0.04)


def test_fetched_bytes_counts_the_batches_the_request_buffered() -> None:
    """What a fetch request brought: the buffered record batches of the partitions it named
    (others' buffers, fetched before, and partitions that brought nothing are not counted)."""
    from types import SimpleNamespace

    from aiokafka import TopicPartition

    def result(size: int) -> SimpleNamespace:
        records = SimpleNamespace(size_in_bytes=lambda: size)
        return SimpleNamespace(_partition_records=SimpleNamespace(_records=records))

    fetcher: Any = SimpleNamespace(
        _records={
            TopicPartition("a", 0): result(1000),
            TopicPartition("a", 1): result(24),
            TopicPartition("b", 0): result(5000),  # buffered before: not in this request
        }
    )
    request = SimpleNamespace(topics=[("a", [(0, 10, 1 << 20), (1, 3, 1 << 20), (2, 0, 1 << 20)])])
    assert kafka_module.fetched_bytes(fetcher, request) == 1024
    assert kafka_module.fetched_bytes(fetcher, None) == 0


class _Fetching:
    """A fetcher as the paced fetch round sees it: its client's marks, its empty streak, and
    what its next fetch brings (``has_data``)."""

    def __init__(self, has_data: bool, **marks: bool) -> None:
        self._client = SimpleNamespace(**marks)
        self._crm_empty_streak = 1_000  # idle for a while
        self.has_data = has_data
        self._records: dict[Any, Any] = {}  # nothing buffered (kafka.fetched_bytes)
        self._fetch_waiters: set[asyncio.Future[None]] = set()  # its consumers' waits for records


@pytest.fixture
def paced_round(monkeypatch: pytest.MonkeyPatch) -> Any:
    """aiokafka's fetch round wrapped by the pacing as in a service (the fetch itself a stand-in;
    the patient pause an hour, so that only an ending, not a timer, finishes it)."""

    async def fetch(self: Any, *args: Any, **kwargs: Any) -> bool:
        return bool(self.has_data)

    monkeypatch.setattr(Fetcher, "_proc_fetch_request", fetch)
    monkeypatch.setattr(Fetcher, "_crm_paced", False, raising=False)
    monkeypatch.setattr(kafka_module, "_empty_fetch_pause", 0.02)
    monkeypatch.setattr(kafka_module, "_fetch_interval", 0.0)
    monkeypatch.setattr(kafka_module, "PATIENT_IDLE_PAUSE_SECONDS", 3600.0)
    kafka_module._pace_fetcher("test")
    return Fetcher._proc_fetch_request


async def test_records_fetched_by_a_department_end_the_key_consumers_patient_pause(paced_round: Any) -> None:
    """The person keys' consumer (``be_patient(..., until_records=True)``) is patient once idle,
    and the first fetch of the process that brings records ends its pause: a key is published
    with the events sealed with it, so it is fetched beside them, not a patient pause later. A
    receipt listener's patient pause (plain ``be_patient``) is not ended by them."""
    keys = asyncio.create_task(paced_round(_Fetching(False, _crm_patient=True, _crm_until_records=True)))
    receipts = asyncio.create_task(paced_round(_Fetching(False, _crm_patient=True)))
    for _ in range(3):
        await asyncio.sleep(0)  # both in their patient pause
    assert len(kafka_module._patient_pauses) == 1
    assert len(kafka_module._pauses) == 2
    await paced_round(_Fetching(False))  # the department's empty fetch: the pauses go on
    assert not keys.done()
    assert not receipts.done()
    assert await paced_round(_Fetching(True)) is True  # the department's fetch brings records
    assert await asyncio.wait_for(keys, 10) is False  # an hour otherwise
    for _ in range(3):
        await asyncio.sleep(0)
    assert not receipts.done(), "not a consumer that waits for records elsewhere"
    kafka_module.hurry_fetches()
    await asyncio.wait_for(receipts, 10)
    assert not kafka_module._pauses
    assert not kafka_module._patient_pauses


async def test_records_fetched_by_a_department_end_the_key_consumers_plain_pause_too(
    paced_round: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While keys flow the key consumer is on its plain pause after each empty fetch: a
    department's fetch that brings records ends that pause too, so the key sealed with them is
    fetched beside them instead of up to a plain pause later (the handoff waiting for it)."""
    monkeypatch.setattr(kafka_module, "_empty_fetch_pause", 3600.0)  # only an ending finishes it
    key_fetcher = _Fetching(False, _crm_patient=True, _crm_until_records=True)
    key_fetcher._crm_empty_streak = 0  # records a moment ago: the plain pause
    plain = asyncio.create_task(paced_round(key_fetcher))
    await asyncio.sleep(0)
    assert kafka_module._pauses
    assert kafka_module._patient_pauses, "ended by other consumers' records"
    assert await paced_round(_Fetching(True)) is True  # the department's fetch brings records
    assert await asyncio.wait_for(plain, 10) is False  # an hour otherwise
    assert not kafka_module._patient_pauses


async def test_the_key_consumers_records_end_no_other_pause(paced_round: Any) -> None:
    """The key consumer's own records end nobody's pause (another key consumer's included)."""
    department = asyncio.create_task(paced_round(_Fetching(False)))
    idle = asyncio.create_task(paced_round(_Fetching(False, _crm_patient=True, _crm_until_records=True)))
    await asyncio.sleep(0)
    await paced_round(_Fetching(True, _crm_patient=True, _crm_until_records=True))
    for _ in range(3):
        await asyncio.sleep(0)
    assert not idle.done()
    kafka_module.hurry_fetches()
    await asyncio.wait_for(idle, 10)
    await asyncio.wait_for(department, 10)


async def test_be_patient_until_records_marks_the_client() -> None:
    consumer = kafka_module.make_consumer(bootstrap_servers="127.0.0.1:9")
    kafka_module.be_patient(consumer, until_records=True)
    assert consumer._client._crm_patient is True
    assert consumer._client._crm_until_records is True


class _Scripted(_Fetching):
    """A fetcher whose fetches bring what ``script`` says, one after the other (then records)."""

    def __init__(self, *script: bool) -> None:
        super().__init__(False)
        self.script = list(script)
        self.fetches = 0
        self._records: dict[Any, Any] = {}
        self._wait_consume_future = asyncio.get_running_loop().create_future()

    @property
    def has_data(self) -> bool:
        self.fetches += 1
        return self.script.pop(0) if self.script else True

    @has_data.setter
    def has_data(self, value: bool) -> None:
        pass


def _assigned(positions: dict[int, int], paused: frozenset[int] = frozenset()) -> Any:
    """An assignment of topic ``t``'s partitions at ``positions``, and its fetch request."""
    states = {
        TopicPartition("t", p): SimpleNamespace(paused=p in paused, has_valid_position=True, position=o)
        for p, o in positions.items()
    }
    return SimpleNamespace(active=True, tps=set(states), state_value=states.get)


def _request(offsets: dict[int, int]) -> Any:
    return SimpleNamespace(topics=[("t", [(p, o, 1 << 20) for p, o in offsets.items()])])


async def test_an_empty_fetch_is_sent_again_in_its_task_until_records_come(paced_round: Any) -> None:
    """An idle consumer's empty fetch and its pause, then the same request again in the same task:
    aiokafka's fetch routine (its round, its wait, a new task) is not run for each of them."""
    fetcher = _Scripted(False, False, False)
    assert await paced_round(fetcher, _assigned({0: 5, 1: 7}), 0, _request({0: 5, 1: 7})) is True
    assert fetcher.fetches == 4, "three empty fetches and the one with records, in one task"


@pytest.mark.parametrize(
    "change",
    [
        "position moved",
        "partition not asked",
        "partition paused",
        "records consumed",
        "unassigned",
        "buffered",
    ],
)
async def test_an_empty_fetch_goes_back_to_the_routine_when_anything_changed(
    paced_round: Any, change: str
) -> None:
    fetcher = _Scripted(False, False, False)
    assignment = _assigned(
        {0: 5, 1: 7}, paused=frozenset({1}) if change == "partition paused" else frozenset()
    )
    request = _request({0: 5} if change == "partition not asked" else {0: 5, 1: 7})
    if change == "position moved":  # a seek while the fetch was out
        assignment.state_value(TopicPartition("t", 0)).position = 3
    elif change == "records consumed":
        fetcher._wait_consume_future.set_result(None)
    elif change == "unassigned":
        assignment.active = False
    elif change == "buffered":
        fetcher._records[TopicPartition("t", 1)] = object()
    assert await paced_round(fetcher, assignment, 0, request) is False
    assert fetcher.fetches == 1


async def test_the_fetch_routine_is_not_woken_five_times_a_second_for_nothing() -> None:
    consumer = kafka_module.make_consumer(bootstrap_servers="127.0.0.1:9")
    assert consumer._consumer_timeout == 5.0  # aiokafka's default 0.2 s
    assert (
        kafka_module.make_consumer(bootstrap_servers="127.0.0.1:9", consumer_timeout_ms=50)._consumer_timeout
        == 0.05
    )


def test_a_consumers_own_interval_paces_its_fetches_that_bring_records(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``pace_records``' interval (a receipt listener's): after a fetch that brought records the
    next one waits out the rest of it, the longer of it and the process's; a backlog's fetch at
    most the backlog's interval; an empty fetch keeps its own pause."""
    monkeypatch.setattr(kafka_module, "_empty_fetch_pause", 0.02)
    monkeypatch.setattr(kafka_module, "_fetch_interval", 0.0)
    assert kafka_module.wait_after_fetch(True, 0.01, 0, interval=0.5) == pytest.approx(0.49)
    big = kafka_module.BACKLOG_FETCH_BYTES
    assert kafka_module.wait_after_fetch(True, 0.01, 0, interval=0.5, fetched_bytes=big) == pytest.approx(
        0.09
    )
    assert kafka_module.wait_after_fetch(False, 0.001, 1, interval=0.5) == pytest.approx(0.02)
    monkeypatch.setattr(kafka_module, "_fetch_interval", 0.7)  # the process's is longer: kept
    assert kafka_module.wait_after_fetch(True, 0.01, 0, interval=0.5) == pytest.approx(0.69)


async def test_pace_records_marks_the_client_and_its_fetch_with_records_waits(
    paced_round: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A paced consumer's fetch that brought records holds its fetch task for the interval (the
    fetcher sends that broker nothing meanwhile: the records of that while wait for one fetch);
    another consumer's fetch with records does not wait."""
    consumer = kafka_module.make_consumer(bootstrap_servers="127.0.0.1:9")
    assert kafka_module.pace_records(consumer, 3600.0) is consumer
    assert consumer._client._crm_fetch_interval == 3600.0
    paced = _Fetching(True, _crm_patient=True)
    paced._client = consumer._client
    held = asyncio.create_task(paced_round(paced))
    for _ in range(3):
        await asyncio.sleep(0)
    assert not held.done(), "the next fetch waits for the interval"
    assert await asyncio.wait_for(paced_round(_Fetching(True)), 10) is True  # unpaced: at once
    held.cancel()
    assert await asyncio.wait_for(held, 10) is False  # a closing fetcher's cancel ends the wait


async def test_a_key_consumers_fetch_is_on_its_way_until_it_pauses_with_what_it_fetched_read(
    paced_round: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A handoff's key check waits for the key consumer's fetch on its way
    (``kafka.records_fetch_pending``) rather than asking the database: from the department's
    records ending the key consumer's pause, through its fetch, until it pauses again with what
    it fetched read by its consumer; its waiters are woken then (a key not fetched by now is not
    coming with that fetch)."""
    monkeypatch.setattr(kafka_module, "_empty_fetch_pause", 3600.0)  # only an ending finishes a pause
    for name in ("_records_fetching", "_records_unread", "_records_paused"):
        monkeypatch.setattr(kafka_module, name, type(getattr(kafka_module, name))())
    keys = _Fetching(False, _crm_patient=True, _crm_until_records=True)
    keys._crm_empty_streak = 0  # keys flowing: the plain pause
    paused = asyncio.create_task(paced_round(keys))
    await asyncio.sleep(0)
    assert not kafka_module.records_fetch_pending(), "in its pause: nothing on its way"
    assert await paced_round(_Fetching(True)) is True  # the department's fetch brings a handoff
    assert kafka_module.records_fetch_pending(), "its pause ended: it fetches next"
    assert await asyncio.wait_for(paused, 10) is False
    keys.has_data = True
    assert await paced_round(keys) is True  # the key comes: no pause after records
    assert kafka_module.records_fetch_pending(), "records fetched, not read yet"
    waiter = asyncio.get_running_loop().create_future()
    kafka_module.watch_records_fetches(waiter)
    kafka_module.records_fetch_read(keys)  # its consumer took and classified them
    keys.has_data = False
    again = asyncio.create_task(paced_round(keys))  # the next fetch is empty: it pauses
    await asyncio.wait_for(waiter, 10)  # woken as it pauses (an hour otherwise)
    assert not kafka_module.records_fetch_pending()
    kafka_module.hurry_fetches()
    assert await asyncio.wait_for(again, 10) is False


async def test_a_key_consumer_fetches_again_at_once_when_records_came_elsewhere_during_its_fetch(
    paced_round: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key consumer's empty fetch was on its way when another consumer fetched records (here:
    a key check hurried the fetches): the key of those records may have reached the broker after
    its fetch was answered, so it fetches again at once instead of pausing (the handoff used to
    wait out the plain pause for it)."""
    monkeypatch.setattr(kafka_module, "_empty_fetch_pause", 3600.0)  # a pause would never end here

    class Overtaken(_Fetching):
        @property
        def has_data(self) -> bool:
            kafka_module.hurry_fetches()  # while the fetch is on its way
            return False

        @has_data.setter
        def has_data(self, value: bool) -> None:
            pass

    keys = Overtaken(False, _crm_patient=True, _crm_until_records=True)
    fetching = asyncio.create_task(paced_round(keys))
    for _ in range(3):
        await asyncio.sleep(0)
    paused = bool(kafka_module._pauses)
    kafka_module.hurry_fetches()  # a pause (the failure) ends here, not an hour later
    assert await asyncio.wait_for(fetching, 10) is False
    assert not paused, "back to the fetch routine at once, no pause"


async def test_a_key_fetch_on_its_way_does_not_keep_a_closed_consumers_fetcher(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fetch on its way is known by its fetcher, held weakly: a key consumer closed while its
    fetch was on its way (a reconnect) leaves nothing behind, and nothing to wait for."""
    import gc

    monkeypatch.setattr(kafka_module, "_records_fetching", type(kafka_module._records_fetching)())
    fetcher = _Fetching(False, _crm_patient=True, _crm_until_records=True)
    paused = asyncio.create_task(kafka_module.pause_empty(3600, until_records=True, fetcher=fetcher))
    await asyncio.sleep(0)
    kafka_module.end_patient_pauses()  # records elsewhere: its fetch is on its way
    await asyncio.wait_for(paused, 10)
    assert kafka_module.records_fetch_pending()
    del fetcher, paused
    gc.collect()
    assert not kafka_module.records_fetch_pending()


class _Broker:
    """An aiokafka connection to the embedded broker as the paced fetch sees it: what is written
    to it is a request, each answered (through aiokafka's own ``_handle_frame``) with the next of
    ``answers`` (a FetchResponse v11's body), in order."""

    def __init__(self, *answers: bytes) -> None:
        self.answers = list(answers)
        self.sent: list[bytes] = []
        self._versions = {FetchRequest.API_KEY: (4, 11)}
        self._client_id = "test"
        self._requests: collections.deque[Any] = collections.deque()
        self._correlation_id = 0
        self._request_timeout = 40.0
        self._writer = SimpleNamespace(write=self._write)

    def connected(self) -> bool:
        return True

    def _next_correlation_id(self) -> int:
        self._correlation_id += 1
        return self._correlation_id

    def _write(self, data: bytes) -> None:
        self.sent.append(data)
        frame = data[8:12] + self.answers.pop(0)  # the request's correlation id, then the answer
        asyncio.get_running_loop().call_soon(AIOKafkaConnection._handle_frame, self, frame)


def _answer(highwater: int, *, error: int = 0, records: bytes = b"") -> bytes:
    partitions: list[Any] = [(p, error, highwater, highwater, 0, [], -1, records) for p in (0, 1)]
    encoded: bytes = FetchResponse_v11(0, 0, 0, [("t", partitions)]).encode()
    return encoded


def _on_broker(fetcher: _Fetching, broker: _Broker) -> None:
    fetcher._client._conns = {(0, ConnectionGroup.DEFAULT): broker}


async def test_an_idle_fetch_sent_again_is_not_decoded_while_its_answer_is_the_same(
    paced_round: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle consumer's request, sent again, goes out as the bytes it was (a new correlation id)
    and its answer is compared with the last empty one as bytes: decoded once, not each time;
    aiokafka's own fetch comes only when the answer changed (records came)."""
    decoded: list[bytes] = []
    decode = FetchResponse_v11.decode

    def counted(data: Any) -> Any:
        decoded.append(data)
        return decode(data)

    monkeypatch.setattr(FetchResponse_v11, "decode", counted)
    fetcher = _Scripted(False, True)  # aiokafka's fetches: an empty one, then records
    broker = _Broker(_answer(5), _answer(5), _answer(5), _answer(6))
    _on_broker(fetcher, broker)
    request = FetchRequest(0, 1, 1 << 20, 0, [("t", [(0, 5, 1 << 20), (1, 5, 1 << 20)])])
    assignment = _assigned({0: 5, 1: 5})
    assert await paced_round(fetcher, assignment, 0, request) is True
    assert fetcher.fetches == 2, "aiokafka's fetch: the first, then the one the changed answer called for"
    assert len(broker.sent) == 4, "three answers the same, the fourth changed"
    assert len(decoded) == 1, "only the first answer to the request sent again"
    encoded = request.prepare(broker._versions)
    for correlation_id, sent in enumerate(broker.sent, start=1):
        header = encoded.build_request_header(correlation_id=correlation_id, client_id="test").encode()
        assert sent == struct.pack(">i", len(header) + len(encoded.encode())) + header + encoded.encode()
    state = assignment.state_value(TopicPartition("t", 0))
    assert state.highwater == 5
    assert state.timestamp is not None


@pytest.mark.parametrize("first", ["records", "error"])
async def test_an_answer_with_records_or_an_error_is_for_aiokafkas_fetch(
    paced_round: Any, first: str
) -> None:
    """The first answer to a request sent again is decoded: one with records or an error is not
    taken as empty, and aiokafka's own fetch runs at once (and handles it, as it would have)."""
    fetcher = _Scripted(False, True)
    answer = _answer(6, records=b"x" * 70) if first == "records" else _answer(5, error=6)
    broker = _Broker(answer)
    _on_broker(fetcher, broker)
    request = FetchRequest(0, 1, 1 << 20, 0, [("t", [(0, 5, 1 << 20), (1, 5, 1 << 20)])])
    assert await paced_round(fetcher, _assigned({0: 5, 1: 5}), 0, request) is True
    assert fetcher.fetches == 2
    assert len(broker.sent) == 1


async def test_a_consumer_not_idle_fetches_as_before(paced_round: Any) -> None:
    """A consumer that had records within the second (on its plain pause: the handoffs at 25/s)
    sends its request again through aiokafka's own fetch, as before: the first records after an
    empty answer cost no round trip more there."""
    fetcher = _Scripted(False, False, True)
    fetcher._crm_empty_streak = 0  # records a moment ago
    broker = _Broker()  # would fail on any request written to it
    _on_broker(fetcher, broker)
    request = FetchRequest(0, 1, 1 << 20, 0, [("t", [(0, 5, 1 << 20), (1, 5, 1 << 20)])])
    assert await paced_round(fetcher, _assigned({0: 5, 1: 5}), 0, request) is True
    assert fetcher.fetches == 3
    assert not broker.sent


def test_idle_waits_end_on_one_grid_and_short_ones_are_not_moved() -> None:
    """The consumers of an idle process that pause (idle 0.1 s, patient 0.5 s) or wait for records
    at different moments end their waits together, on the grid: one wake-up of the process, not
    one each. Each wait keeps its length within half a grid step; the plain pause is not moved."""
    step = wakeups.WAKE_GRID_SECONDS
    ends = set()
    for begun in (1000.001, 1000.013, 1000.031, 1000.049):
        for seconds in (0.1, 0.5, 1.0):
            end = wakeups.on_grid(begun, seconds)
            assert abs(end - (begun + seconds)) <= step / 2 + 1e-9
            assert end - begun >= step / 2
            ends.add(round(end / step))
            assert end == round(end / step) * step
    assert ends == {10001, 10005, 10010}, "every consumer's wait of one length ends at one moment"
    assert wakeups.on_grid(1000.013, 0.02) == 1000.013 + 0.02  # the plain pause is not moved


async def test_an_idle_pause_ends_on_the_grid(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = timers_asked(monkeypatch)
    await kafka_module.pause_empty(0.1)
    [when] = asked
    assert when == round(when / wakeups.WAKE_GRID_SECONDS) * wakeups.WAKE_GRID_SECONDS


def _trickle(**marks: bool) -> Any:
    """A caught-up consumer's fetcher whose fetch brings records (buffered in partition 0)."""
    fetcher = _Fetching(True, **marks)
    fetcher._records[TopicPartition("t", 0)] = object()
    return fetcher


def _seen(highwaters: dict[int, int]) -> Any:
    """An assignment of topic ``t``'s partitions at offsets 5 and 7 whose fetch answer gave these
    high watermarks (``highwaters``: how many records the broker held past each offset)."""
    assignment = _assigned({0: 5, 1: 7})
    for partition, highwater in highwaters.items():
        assignment.state_value(TopicPartition("t", partition)).highwater = highwater
    return assignment


async def test_a_trickles_fetch_waits_the_plain_pause_as_an_empty_one(
    paced_round: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caught-up consumer's fetch that brought a record or two (a live trickle: the handoffs at
    25/s) is followed by the plain pause, not by a fetch at once that finds nothing (a third of a
    department consumer's fetch rounds); like an empty fetch's pause, ``hurry_fetches`` ends it.
    The consumer waiting for records has them at once, not when the pause is over (aiokafka's
    routine wakes it when the fetch task ends)."""
    monkeypatch.setattr(kafka_module, "_empty_fetch_pause", 3600.0)  # only an ending finishes it
    assignment, request = _seen({0: 7, 1: 7}), _request({0: 5, 1: 7})  # two records came
    fetcher = _trickle()
    waiting = asyncio.get_running_loop().create_future()
    fetcher._fetch_waiters.add(waiting)
    round_ = asyncio.create_task(paced_round(fetcher, assignment, 0, request))
    for _ in range(3):
        await asyncio.sleep(0)
    assert not round_.done(), "the next fetch waits the pause"
    assert waiting.done(), "the consumer has the records while the pause goes on"
    assert kafka_module._pauses
    kafka_module.hurry_fetches()
    assert await asyncio.wait_for(round_, 10) is True  # an hour otherwise
    assert not kafka_module._pauses


@pytest.mark.parametrize(
    "case",
    ["more behind it", "records in hand", "unpaced", "key consumer", "interval", "no answer"],
)
async def test_a_fetch_with_records_that_is_not_a_trickles_fetches_again_at_once(
    paced_round: Any, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """No pause after records where the next fetch may bring more at once: a fetch that found more
    records behind it on the broker (a backlog, a saturated flow), one whose request left out
    partitions whose records the consumer had in hand (it was not caught up), a broker that holds
    fetches (Apache Kafka: no pacing), a paced interval's consumer, a partition whose high
    watermark is unknown; and the person keys' consumer's trickle (``be_patient(...,
    until_records=True)``: paused after its keys, the handoffs waited for them)."""
    monkeypatch.setattr(kafka_module, "_empty_fetch_pause", 0.0 if case == "unpaced" else 3600.0)
    if case == "interval":
        monkeypatch.setattr(kafka_module, "_fetch_interval", 1e-6)
    behind = kafka_module.TRICKLE_FETCH_RECORDS + 1 if "behind" in case else 1
    assignment = _seen({0: 5 + behind} if case == "no answer" else {0: 5 + behind, 1: 7})
    marks = {"_crm_patient": True, "_crm_until_records": True} if "key" in case else {}
    request = _request({0: 5} if case == "records in hand" else {0: 5, 1: 7})
    fetched = paced_round(_trickle(**marks), assignment, 0, request)
    assert await asyncio.wait_for(fetched, 10) is True  # an hour if it paused
    assert not kafka_module._pauses
