"""The platform consumer's partitions are handled side by side, not in lockstep: a record
fetched while another partition's batch is still being handled (its transaction, its commit,
its offsets) is handled at once, each partition's records still strictly in order (the later
ones queued behind its batch), at most a bounded number taken (no Kafka, no database: a
stand-in client holding records, and partition handling that the test holds and releases)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from crm_platform.consumer import ConsumerConfig, EventConsumer, Outcome, _Commits, _CommitsFirst
from crm_platform.mongo import Store, connect

TOPIC = "crm.test.partitions"
PARTITIONS = [TopicPartition(TOPIC, p) for p in range(6)]
DEADLINE = 10.0  # seconds: only ever reached when the consumer never gets there (a failure)


class Kafka:
    """aiokafka's ``getmany`` / ``commit`` over records the test adds: a ``getmany`` that finds
    none waits for the next one (up to its timeout), as aiokafka's does."""

    def __init__(self) -> None:
        self.buffered: dict[TopicPartition, list[int]] = {tp: [] for tp in PARTITIONS}
        self.next_offset = dict.fromkeys(PARTITIONS, 0)
        self.committed: list[dict[TopicPartition, int]] = []
        self._arrived = asyncio.Event()

    def add(self, tp: TopicPartition, n: int = 1) -> None:
        for _ in range(n):
            self.buffered[tp].append(self.next_offset[tp])
            self.next_offset[tp] += 1
        self._arrived.set()

    def assignment(self) -> set[TopicPartition]:
        return set(PARTITIONS)

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        asked = list(partitions) or PARTITIONS
        while True:
            for tp in asked:
                if self.buffered[tp]:
                    offsets, self.buffered[tp] = (
                        self.buffered[tp][:max_records],
                        self.buffered[tp][max_records:],
                    )
                    return {tp: [_record(tp, o) for o in offsets]}
            if not timeout_ms:
                return {}
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout_ms / 1000)
            except TimeoutError:
                return {}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.committed.append(dict(offsets))


def _record(tp: TopicPartition, offset: int) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(TOPIC, tp.partition, offset, 0, 0, b"k", b"v", None, 1, 1, ())


class Held(EventConsumer):
    """Handles a partition's records by noting them; a partition the test holds waits for its
    release first. No database: ``_handle_partition`` is the unit the loop schedules."""

    def __init__(self, **config: Any) -> None:
        store = Store(connect("mongodb://127.0.0.1:1", "test"), "unused", "test")  # never connects
        super().__init__(
            ConsumerConfig(service="test", group_id="test", topics=[TOPIC], bootstrap="-", **config),
            store,
            {},
        )
        self.events: list[tuple[str, int, int]] = []  # (begin | end, partition, first offset)
        self.held: dict[int, asyncio.Event] = {}
        self.in_flight = 0
        self.most_in_flight = 0

    async def _handle_partition(
        self, tp: TopicPartition, records: list[ConsumerRecord[Any, Any]], offsets: dict[TopicPartition, int]
    ) -> None:
        self.in_flight += len(records)
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.events.append(("begin", tp.partition, records[0].offset))
        release = self.held.get(tp.partition)
        if release is not None:
            await release.wait()
        self.events.append(("end", tp.partition, records[0].offset))
        self.in_flight -= len(records)
        offsets[tp] = records[-1].offset + 1


async def _turns(n: int = 100) -> None:
    """Let the event loop run ``n`` rounds: everything here is in memory, so whatever the
    consumer would do next (take more records, end the loop) it does within them."""
    for _ in range(n):
        await asyncio.sleep(0)


async def _until(check: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), DEADLINE)


def _running(consumer: Held, kafka: Kafka, body: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        consumer.consumer = kafka
        loop = asyncio.create_task(consumer._loop())
        try:
            await body()
        finally:
            await consumer.stop()
            for release in consumer.held.values():
                release.set()
            await asyncio.wait_for(loop, DEADLINE)

    asyncio.run(main())


def test_a_partition_fetched_later_is_handled_while_another_partitions_batch_is_still_handled() -> None:
    consumer, kafka = Held(), Kafka()

    async def body() -> None:
        consumer.held[0] = asyncio.Event()
        kafka.add(PARTITIONS[0])
        await _until(lambda: ("begin", 0, 0) in consumer.events)
        kafka.add(PARTITIONS[1])  # arrives while partition 0's batch is being handled
        await _until(lambda: ("end", 1, 0) in consumer.events)
        assert ("end", 0, 0) not in consumer.events, "partition 1 did not wait for partition 0"
        assert {PARTITIONS[1]: 1} in kafka.committed, "its offset is committed as its handling ends"
        assert all(PARTITIONS[0] not in c for c in kafka.committed), "partition 0's only once handled"
        consumer.held[0].set()
        await _until(lambda: {PARTITIONS[0]: 1} in kafka.committed)

    _running(consumer, kafka, body)


def test_a_partitions_next_records_wait_for_its_batch_being_handled() -> None:
    consumer, kafka = Held(), Kafka()

    async def body() -> None:
        consumer.held[0] = asyncio.Event()
        kafka.add(PARTITIONS[0])
        await _until(lambda: ("begin", 0, 0) in consumer.events)
        kafka.add(PARTITIONS[0], 2)  # the same partition's next records
        kafka.add(PARTITIONS[2])
        await _until(lambda: ("end", 2, 0) in consumer.events)  # the loop went on fetching meanwhile
        # Taken out of the client all the same (queued): records left in aiokafka's buffer hold
        # back its fetches of every other partition on the broker.
        await _until(lambda: not kafka.buffered[PARTITIONS[0]])
        assert ("begin", 0, 1) not in consumer.events, "partition 0's next records wait for its batch"
        consumer.held[0].set()
        await _until(lambda: ("end", 0, 1) in consumer.events)
        mine = [e for e in consumer.events if e[1] == 0]
        assert mine == [("begin", 0, 0), ("end", 0, 0), ("begin", 0, 1), ("end", 0, 1)], (
            "in order, one at a time"
        )
        assert [c[PARTITIONS[0]] for c in kafka.committed if PARTITIONS[0] in c] == [1, 3]

    _running(consumer, kafka, body)


def test_the_records_taken_and_not_yet_handled_stay_within_max_fetch_records() -> None:
    consumer, kafka = Held(max_records=2, max_fetch_records=5), Kafka()

    async def body() -> None:
        for tp in PARTITIONS:
            consumer.held[tp.partition] = asyncio.Event()
            kafka.add(tp, 2)
        await _until(lambda: consumer.in_flight >= 4)
        await _turns()  # anything more the loop would take, it takes now
        # 4 taken: the room left (1) is less than a batch (2), so the loop waits for room
        assert consumer.most_in_flight == 4
        for release in consumer.held.values():
            release.set()
        await _until(lambda: all(any(c.get(tp) == 2 for c in kafka.committed) for tp in PARTITIONS))
        assert consumer.most_in_flight <= 5
        begun = sorted(e for e in consumer.events if e[0] == "begin")
        assert begun == [("begin", tp.partition, 0) for tp in PARTITIONS], (
            "each partition whole, in one batch"
        )

    _running(consumer, kafka, body)


def test_a_batch_produced_together_is_not_taken_in_pieces_when_the_bound_is_nearly_reached() -> None:
    # A fetch with room for fewer records than a batch would take a partition's records produced
    # together (one group-commit transaction, crm_platform.testing.produce_together) in pieces:
    # seen as two transactions for one batch of won deals in the service desk's suite.
    consumer, kafka = Held(max_records=5, max_fetch_records=6), Kafka()

    async def body() -> None:
        consumer.held[0] = asyncio.Event()
        kafka.add(PARTITIONS[0], 2)
        await _until(lambda: ("begin", 0, 0) in consumer.events)
        kafka.add(PARTITIONS[1], 5)  # room for 4 while partition 0's 2 are being handled
        await _turns()
        assert not any(e[1] == 1 for e in consumer.events), "taken only when a whole batch fits"
        consumer.held[0].set()
        await _until(lambda: ("end", 1, 0) in consumer.events)
        assert [e for e in consumer.events if e[1] == 1] == [("begin", 1, 0), ("end", 1, 0)]
        assert {PARTITIONS[1]: 5} in kafka.committed

    _running(consumer, kafka, body)


def test_a_failing_partition_ends_the_loop_after_the_others_are_handled_and_committed() -> None:
    consumer, kafka = Held(), Kafka()

    failed: list[TopicPartition] = []

    async def fail(tp: TopicPartition, records: list[Any], offsets: dict[TopicPartition, int]) -> None:
        failed.append(tp)
        raise RuntimeError("broker went away")

    async def main() -> None:
        consumer.consumer = kafka
        consumer.held[0] = asyncio.Event()
        kafka.add(PARTITIONS[0])
        loop = asyncio.create_task(consumer._loop())
        await _until(lambda: ("begin", 0, 0) in consumer.events)
        handle = consumer._handle_partition
        consumer._handle_partition = fail  # type: ignore[method-assign]
        kafka.add(PARTITIONS[1])
        await _until(lambda: failed == [PARTITIONS[1]])
        await _turns()
        assert not loop.done(), "partition 0 is still being handled: the loop waits for it"
        consumer._handle_partition = handle  # type: ignore[method-assign]
        consumer.held[0].set()
        with pytest.raises(RuntimeError, match="broker went away"):  # ends the loop: it reconnects
            await asyncio.wait_for(loop, DEADLINE)
        assert {PARTITIONS[0]: 1} in kafka.committed, "the other partition's handling ended and committed"

    asyncio.run(main())


class Classifying(Held):
    """Told of each classified record, as the person keys' consumer is (``on_classified``):
    notes the records ``_prepare`` classified."""

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        self.on_classified = lambda envelope, event: None
        self.classified: list[tuple[int, int]] = []

    def _prepare(self, record: ConsumerRecord[Any, Any]) -> Outcome:
        self.classified.append((record.partition, record.offset))
        return Outcome("ignored")


def test_a_consumer_told_of_classified_records_classifies_them_as_they_are_taken() -> None:
    """The key consumer's records are classified as the loop takes them, not when their
    partition's lane gets to them: a key queued behind its partition's batch being stored opens
    its handoff at once (``shredding.key_fetched``) instead of after that batch's commit."""
    consumer, kafka = Classifying(), Kafka()

    async def body() -> None:
        consumer.held[0] = asyncio.Event()
        kafka.add(PARTITIONS[0])
        await _until(lambda: ("begin", 0, 0) in consumer.events)
        kafka.add(PARTITIONS[0], 2)  # queued behind the held batch
        await _until(lambda: (0, 2) in consumer.classified)
        assert consumer.classified == [(0, 0), (0, 1), (0, 2)]
        assert ("begin", 0, 1) not in consumer.events, "still queued behind its partition's batch"
        consumer.held[0].set()
        await _until(lambda: ("end", 0, 1) in consumer.events)

    _running(consumer, kafka, body)


async def test_a_record_classified_as_taken_is_not_classified_again_when_handled() -> None:
    store = Store(connect("mongodb://127.0.0.1:1", "test"), "unused", "test")  # never connects
    consumer = EventConsumer(
        ConsumerConfig(service="test", group_id="test", topics=[TOPIC], bootstrap="-"), store, {}
    )
    consumer._ahead[(TOPIC, 0, 5)] = Outcome("ignored")

    def again(record: Any) -> None:
        raise AssertionError("classified twice")

    consumer._prepare = again  # type: ignore[method-assign]
    offsets: dict[TopicPartition, int] = {}
    await consumer._handle_partition(PARTITIONS[0], [_record(PARTITIONS[0], 5)], offsets)
    assert offsets == {PARTITIONS[0]: 6}
    assert not consumer._ahead


def test_room_freed_by_a_batch_goes_to_an_idle_partition_before_a_busy_partitions_backlog() -> None:
    """A backlog: the client holds many records of a busy partition (first in its buffer, as
    aiokafka's ``getmany`` takes first) and a whole batch of an idle one. The room another
    partition's end frees starts the idle partition's batch beside the busy one, not the busy
    one's next batch queued behind it (the drain ran one partition at a time)."""
    consumer, kafka = Held(max_records=2, max_fetch_records=4), Kafka()

    async def body() -> None:
        consumer.held[0] = asyncio.Event()
        consumer.held[1] = asyncio.Event()
        consumer.held[2] = asyncio.Event()
        kafka.add(PARTITIONS[0], 10)
        kafka.add(PARTITIONS[1], 2)
        await _until(lambda: ("begin", 1, 0) in consumer.events)  # room for two batches: taken
        kafka.add(PARTITIONS[2], 2)
        await _turns()
        assert not any(e[1] == 2 for e in consumer.events), "no room while two batches are held"
        consumer.held[1].set()  # its end frees a batch's room while partition 0 is still held
        await _until(lambda: ("begin", 2, 0) in consumer.events)
        assert ("end", 0, 0) not in consumer.events, "partition 2 did not wait for partition 0"
        assert kafka.buffered[PARTITIONS[0]] == list(range(2, 10)), "partition 0's next batch left"
        consumer.held[2].set()
        consumer.held[0].set()
        await _until(lambda: any(c.get(PARTITIONS[0]) == 10 for c in kafka.committed))
        mine = [e for e in consumer.events if e[1] == 0 and e[0] == "begin"]
        assert mine == [("begin", 0, o) for o in range(0, 10, 2)], "partition 0 in order, batch by batch"

    _running(consumer, kafka, body)


def test_batches_ended_while_offsets_gather_are_committed_in_one_request_by_the_loops_end() -> None:
    """``commit_gather_seconds``: a batch's end commits nothing at once; the offsets of every
    batch ended meanwhile (several partitions, a partition's later batch) go in ONE commit, each
    partition's highest. A gather longer than the test: the loop's end commits them."""
    consumer, kafka = Held(max_records=2, commit_gather_seconds=3600), Kafka()

    async def body() -> None:
        kafka.add(PARTITIONS[0], 3)  # two batches: offsets 0-1, then 2
        kafka.add(PARTITIONS[1])
        await _until(lambda: ("end", 0, 2) in consumer.events and ("end", 1, 0) in consumer.events)
        kafka.add(PARTITIONS[2])
        await _until(lambda: ("end", 2, 0) in consumer.events)
        await _turns()
        assert kafka.committed == [], "nothing committed while the offsets gather"

    _running(consumer, kafka, body)
    assert kafka.committed == [{PARTITIONS[0]: 3, PARTITIONS[1]: 1, PARTITIONS[2]: 1}]


def test_gathered_offsets_are_committed_when_the_gather_ends_while_the_consumer_runs() -> None:
    consumer, kafka = Held(commit_gather_seconds=0.01), Kafka()

    async def body() -> None:
        kafka.add(PARTITIONS[3])
        await _until(lambda: kafka.committed == [{PARTITIONS[3]: 1}])
        kafka.add(PARTITIONS[3])
        await _until(lambda: kafka.committed == [{PARTITIONS[3]: 1}, {PARTITIONS[3]: 2}])

    _running(consumer, kafka, body)


def test_a_dead_letters_commit_takes_the_gathered_offsets_with_it_at_once() -> None:
    """A dead letter's offset is committed at once (never sent to the dead letters twice), and the
    offsets gathered before it go in the same commit (a partition's committed offset only moves on)."""
    consumer, kafka = Held(commit_gather_seconds=3600), Kafka()

    async def body() -> None:
        kafka.add(PARTITIONS[0], 2)
        await _until(lambda: ("end", 0, 0) in consumer.events)
        await _turns()
        assert kafka.committed == []
        assert consumer._commits is not None
        await consumer._commits.now({PARTITIONS[4]: 8})  # as _settle does for a dead letter
        assert kafka.committed == [{PARTITIONS[0]: 2, PARTITIONS[4]: 8}]

    _running(consumer, kafka, body)
    assert kafka.committed == [{PARTITIONS[0]: 2, PARTITIONS[4]: 8}], "nothing left for the loop's end"


async def test_the_gathered_offsets_are_committed_before_partitions_are_taken_away() -> None:
    """The rebalance listener a gathering consumer subscribes with commits what it gathered while
    it still owns the partitions, then tells the configured listener (crm_platform.liveness)."""
    told: list[tuple[str, Any]] = []

    class Tracker:
        async def on_partitions_revoked(self, revoked: Any) -> None:
            told.append(("revoked", list(kafka.committed)))

        def on_partitions_assigned(self, assigned: Any) -> None:  # a plain method is told too
            told.append(("assigned", list(assigned)))

    kafka = Kafka()
    consumer = Held(commit_gather_seconds=3600)
    consumer._commits = _Commits(kafka, 3600)  # the stand-in client
    await consumer._commits.add({PARTITIONS[5]: 4})
    listener = _CommitsFirst(consumer, Tracker())
    await listener.on_partitions_revoked({PARTITIONS[5]})
    await listener.on_partitions_assigned({PARTITIONS[5]})
    assert told == [("revoked", [{PARTITIONS[5]: 4}]), ("assigned", [PARTITIONS[5]])]
    await consumer._commits.close()
    assert kafka.committed == [{PARTITIONS[5]: 4}], "committed once"
