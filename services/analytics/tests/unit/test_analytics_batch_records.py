"""A fetched batch folded from aiokafka's records as they come (analytics.batches): no faust
message per record, faust's bookkeeping per batch with faust's own results (acked offsets and
commits, read offsets, a rebalance's wait), the consumed counts per chunk, the headers read once."""

from __future__ import annotations

import asyncio
import random
from typing import Any, cast

import pytest
from analytics.batches import BatchConsumer
from analytics.domain.reads import SKIPPED_EVENT_TYPES, triage, unread_type
from analytics.worker import SOURCE_TOPICS, AnalyticsWorker
from crm_contracts.topics import LEAD_QUALIFIED, LEADS_EVENTS, SALES_EVENTS
from crm_platform import metrics
from crm_platform.dead_letters import REPLAY_FOR, skips_replay
from faust.types import TP

from .test_analytics_batches import make_worker, record


@pytest.fixture
def batch_consumer(monkeypatch) -> tuple[AnalyticsWorker, BatchConsumer]:
    worker = make_worker()
    consumer = worker.app.consumer
    assert isinstance(consumer, BatchConsumer)
    monkeypatch.setattr(consumer, "highwater", lambda tp: 0)  # no broker to ask
    cast(Any, worker.app.topics)._acking_topics.update(
        SOURCE_TOPICS
    )  # as the running app's conductor has them
    return worker, consumer


async def test_a_fetched_batch_is_folded_from_its_records_without_a_faust_message_each(
    batch_consumer, journey, monkeypatch
) -> None:
    """The fold reads aiokafka's records themselves: no ``ConsumerMessage`` built, tracked or
    acked one by one (about a tenth of the replaying worker's CPU); faust's monitor still counts
    them, and the read offsets are faust's."""
    worker, consumer = batch_consumer
    made: list[Any] = []
    to_message = consumer._to_message

    def making(tp: TP, r: Any) -> Any:
        made.append(r)
        return to_message(tp, r)

    monkeypatch.setattr(consumer, "_to_message", making)
    tracked: list[Any] = []
    monkeypatch.setattr(consumer, "track_message", tracked.append)
    leads, qualified = TP(LEADS_EVENTS, 2), TP(LEAD_QUALIFIED, 0)
    records = {
        leads: [record(LEADS_EVENTS, 2, n, journey.captured(f"lead-{n}").to_bytes()) for n in range(30)],
        qualified: [
            record(LEAD_QUALIFIED, 0, 40 + n, journey.qualified(f"lead-{n}").to_bytes()) for n in range(5)
        ],
    }
    received = worker.app.monitor.messages_received_total
    await consumer.deliver(records, None)
    assert (made, tracked) == ([], [])
    assert worker.state.figures.funnel["captured"] == 30
    assert worker.state.figures.funnel["qualified"] == 5
    assert (consumer._read_offset[leads], consumer._read_offset[qualified]) == (29, 44)
    assert worker.app.monitor.messages_received_total - received == 35
    assert worker.app.monitor.tp_read_offsets[qualified] == 44
    assert worker._batch_confirmer is not None
    await asyncio.wait_for(worker._batch_confirmer.drained(), 5)
    assert sorted(consumer._acked[leads]) == list(range(30))
    await worker._batch_confirmer.stop()


def test_acking_a_batchs_records_keeps_fausts_own_acked_offsets(batch_consumer) -> None:
    """``ack_records`` gives faust's acked offsets, counts and next commit exactly as faust's
    ``ack`` of each record's message does: an offset acked twice counts once, one below the
    committed offset is not kept, a partition's offsets across batches and gaps commit as faust's."""
    _worker, ours = batch_consumer
    theirs = cast(Any, make_worker().app.consumer)
    theirs.app.topics._acking_topics.update(SOURCE_TOPICS)
    rng = random.Random(12)
    tps = [TP(LEADS_EVENTS, 0), TP(LEAD_QUALIFIED, 3), TP(SALES_EVENTS, 5)]
    for consumer in (ours, theirs):
        consumer._committed_offset[tps[1]] = 20
    for _ in range(8):  # batches of records, some acked again, some below the commit
        batch = [
            record(tp.topic, tp.partition, rng.randrange(0, 60), b"{}")
            for tp in rng.choices(tps, k=rng.randrange(1, 40))
        ]
        ours.ack_records(batch)
        for r in batch:
            theirs.ack(theirs._to_message(TP(r.topic, r.partition), r))
    for tp in tps:
        assert ours._acked[tp] == theirs._acked[tp]
        assert ours._acked_index[tp] == theirs._acked_index[tp]
        assert ours._new_offset(tp) == theirs._new_offset(tp)
    assert ours._n_acked == theirs._n_acked


async def test_a_rebalance_waits_for_the_batch_path_to_confirm_what_it_took(
    batch_consumer, journey, monkeypatch
) -> None:
    """faust waits for its tracked messages to be acked before it gives partitions up or stops
    (``wait_empty``): the records the batch path took are waited for the same way, until their
    changelog flush is stored and they are acked."""
    worker, consumer = batch_consumer
    gate = asyncio.Event()
    monkeypatch.setattr(worker.changelog, "flush", lambda: asyncio.ensure_future(gate.wait()))
    commits: list[bool] = []

    async def commit(*args: Any, **kwargs: Any) -> bool:
        commits.append(True)
        return True

    monkeypatch.setattr(consumer, "commit", commit)
    leads = TP(LEADS_EVENTS, 4)
    records = {
        leads: [record(LEADS_EVENTS, 4, n, journey.captured(f"lead-{n}").to_bytes()) for n in range(12)]
    }
    await consumer.deliver(records, None)
    waiting = asyncio.ensure_future(consumer.wait_empty())
    for _ in range(20):
        await asyncio.sleep(0)
    assert not waiting.done(), "faust must not give the partitions up before the fold is confirmed"
    assert not consumer._acked[leads]
    gate.set()
    await asyncio.wait_for(waiting, 5)
    assert sorted(consumer._acked[leads]) == list(range(12))
    assert commits, "then faust commits, as after its tracked messages"
    assert worker._batch_confirmer is not None
    await worker._batch_confirmer.stop()
    await asyncio.wait_for(consumer.wait_empty(), 5)  # a stopped confirmer is not waited for


async def test_a_chunks_consumed_counts_are_one_increment_per_outcome(
    batch_consumer, journey, monkeypatch
) -> None:
    """The consumed counter moves by what each record's outcome is, as it did per record, with
    one increment per (topic, type, outcome) of a chunk instead of one per record."""
    worker, consumer = batch_consumer
    incs: list[float] = []
    service = worker.metrics.service

    def value(topic: str, event_type: str, outcome: str) -> float:
        return metrics.EVENTS_CONSUMED.labels(service, topic, event_type, outcome)._value.get()

    before = (
        value(LEADS_EVENTS, "lead.captured", "processed"),
        value(LEADS_EVENTS, "lead.status_changed", "skipped"),
    )
    real_labels = metrics.EVENTS_CONSUMED.labels

    def labels(*names: str) -> Any:
        child = real_labels(*names)
        inc = child.inc

        def counting(amount: float = 1) -> None:
            incs.append(amount)
            inc(amount)

        monkeypatch.setattr(child, "inc", counting)
        return child

    monkeypatch.setattr(metrics.EVENTS_CONSUMED, "labels", labels)
    skipped = [("event_type", b"lead.status_changed")]
    leads = TP(LEADS_EVENTS, 1)
    batch = [record(LEADS_EVENTS, 1, n, journey.captured(f"lead-{n}").to_bytes()) for n in range(7)]
    for n in range(7, 10):
        batch.append(record(LEADS_EVENTS, 1, n, b"{}"))
        batch[-1].headers = skipped
    await consumer.deliver({leads: batch}, None)
    after = (
        value(LEADS_EVENTS, "lead.captured", "processed"),
        value(LEADS_EVENTS, "lead.status_changed", "skipped"),
    )
    assert (after[0] - before[0], after[1] - before[1]) == (7, 3)
    assert sorted(incs) == [3, 7]
    assert worker._batch_confirmer is not None
    await worker._batch_confirmer.stop()


def test_one_pass_over_the_headers_answers_as_the_replay_and_unread_checks_did() -> None:
    """``triage`` (one pass) skips exactly the records ``skips_replay`` and ``unread_type`` skip,
    in that order, with the same type: generated header lists with both headers, either, neither,
    repeated ones, non-bytes values, the group's own replays and another's."""
    rng = random.Random(7)
    group = "crm-analytics"
    types = [
        *sorted(SKIPPED_EVENT_TYPES)[:4],
        "lead.qualified",
        "handoff.received",
        "no.such.type",
        "\u00e9t\u00e9",
    ]
    keys = [REPLAY_FOR, "event_type", "traceparent", "content_type"]
    values: list[Any] = [
        group.encode(),
        b"crm-sales",
        None,
        "crm-sales",
        *(t.encode() for t in types),
        bytearray(b"lead.status_changed"),
    ]
    for _ in range(3000):
        headers = [(rng.choice(keys), rng.choice(values)) for _ in range(rng.randrange(0, 5))]
        if skips_replay(headers, group):
            expected: tuple[str, str] | None = ("replay", "ignored")
        else:
            unread = unread_type(headers)
            expected = None if unread is None else (unread, "skipped")
        assert triage(headers, group) == expected, headers
        assert triage(dict(headers), group) == (
            ("replay", "ignored")
            if skips_replay(dict(headers), group)
            else (None if unread_type(dict(headers)) is None else (unread_type(dict(headers)), "skipped"))
        )
    assert triage(None, group) is None


async def test_a_chunk_reads_the_clock_once_and_makes_no_span_with_tracing_off(
    batch_consumer, journey, monkeypatch
) -> None:
    """A chunk's records are judged plausible against one reading of the clock (again after an
    awaited step, here a dead letter), and with tracing off no span context is entered per
    record; a record too far in the future is still dead-lettered as implausible."""
    from contextlib import nullcontext

    import analytics.worker as worker_module
    from crm_platform import tracing

    worker, consumer = batch_consumer
    readings: list[Any] = []
    real_utcnow = worker_module.utcnow

    def utcnow() -> Any:
        readings.append(real_utcnow())
        return readings[-1]

    monkeypatch.setattr(worker_module, "utcnow", utcnow)
    spans: list[Any] = []

    def consuming(*args: Any, **kwargs: Any) -> Any:
        spans.append(args)
        return nullcontext()

    monkeypatch.setattr(tracing, "consuming", consuming)
    parked: list[str] = []

    async def dead_letter(message: Any, reason: str, error: str, event_type: str | None = None) -> None:
        parked.append(reason)

    monkeypatch.setattr(worker, "dead_letter", dead_letter)
    future = journey.captured("lead-late", when=3600.0, base=real_utcnow())
    batch = [record(LEADS_EVENTS, 1, n, journey.captured(f"lead-{n}").to_bytes()) for n in range(5)]
    batch.append(record(LEADS_EVENTS, 1, 5, future.to_bytes()))
    batch.append(record(LEADS_EVENTS, 1, 6, journey.captured("lead-6").to_bytes()))
    await consumer.deliver({TP(LEADS_EVENTS, 1): batch}, None)
    assert parked == ["implausible_time"]
    assert len(readings) == 2  # the chunk's, and again after the dead letter
    assert spans == []
    assert worker.state.figures.funnel["captured"] == 6
    assert worker._batch_confirmer is not None
    await worker._batch_confirmer.stop()
