"""A fetch's records of the source topics folded as one batch (analytics.batches), without a
broker: the worker's real faust consumer, handed a fetch's records as aiokafka gives them."""

from __future__ import annotations

import asyncio
import uuid
from types import SimpleNamespace
from typing import Any, cast

import pytest
from analytics.batches import BatchConsumer
from analytics.domain.engine import AnalyticsState
from analytics.settings import AnalyticsSettings
from analytics.worker import SOURCE_TOPICS, AnalyticsWorker
from crm_contracts.topics import HANDOFF_RECEIPTS, LEAD_QUALIFIED, LEADS_EVENTS
from faust.types import TP


def make_worker() -> AnalyticsWorker:
    worker = AnalyticsWorker(
        AnalyticsSettings(
            KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9",
            MONGODB_URI="mongodb://127.0.0.1:9",
            CRM_ANALYTICS_APP_ID=f"crm-analytics-unit-{uuid.uuid4().hex[:8]}",
        )
    )
    worker.state = AnalyticsState()  # plain dicts: no changelog to write
    return worker


def record(topic: str, partition: int, offset: int, value: bytes) -> Any:
    """What aiokafka's fetcher gives for one record."""
    return SimpleNamespace(
        topic=topic,
        partition=partition,
        offset=offset,
        timestamp=1_700_000_000_000,
        timestamp_type=0,
        headers=[],
        key=None,
        value=value,
        checksum=None,
        serialized_key_size=0,
        serialized_value_size=len(value),
    )


@pytest.fixture
async def consumer(monkeypatch) -> tuple[AnalyticsWorker, BatchConsumer, list[Any]]:
    worker = make_worker()
    consumer = worker.app.consumer
    assert isinstance(consumer, BatchConsumer)
    monkeypatch.setattr(consumer, "highwater", lambda tp: 0)  # no broker to ask
    # The running app's conductor acks the agent's topics (its channel acks): faust keeps their
    # acked offsets and commits from them.
    cast(Any, worker.app.topics)._acking_topics.update(SOURCE_TOPICS)
    one_by_one: list[Any] = []

    async def conductor(message: Any) -> None:
        one_by_one.append(message)

    monkeypatch.setattr(consumer, "callback", conductor)
    return worker, consumer, one_by_one


async def test_a_fetch_of_the_source_topics_is_folded_as_one_batch_never_through_the_conductor(
    consumer, journey, monkeypatch
) -> None:
    """One handler call per fetch; every event folded once; acked only once its batch's
    changelog flush is stored; the tables' changelog records still go through the conductor."""
    worker, batch_consumer, one_by_one = consumer
    calls: list[int] = []
    fold_batch = worker.fold_batch

    async def counting(records: Any, generation: int) -> int:
        calls.append(len(records))
        return await fold_batch(records, generation)

    monkeypatch.setattr(batch_consumer, "_batch_handler", counting)
    take, taken = worker._take_at_once, []

    def counting_take(record: Any, *args: Any) -> Any:
        taken.append((record.topic, record.offset))
        return take(record, *args)

    monkeypatch.setattr(worker, "_take_at_once", counting_take)
    gate = asyncio.Event()

    def flush() -> asyncio.Future[None]:
        return asyncio.ensure_future(gate.wait())  # type: ignore[arg-type]

    monkeypatch.setattr(worker.changelog, "flush", flush)
    leads, qualified = TP(LEADS_EVENTS, 0), TP(LEAD_QUALIFIED, 3)
    changelog = TP(f"{worker.settings.app_id}-leads-changelog", 0)
    records = {
        leads: [record(LEADS_EVENTS, 0, n, journey.captured(f"lead-{n}").to_bytes()) for n in range(1200)],
        qualified: [record(LEAD_QUALIFIED, 3, 7, journey.qualified("lead-5").to_bytes())],
        changelog: [record(changelog.topic, 0, 0, b'{"captured_at": 1.0}')],
    }
    await batch_consumer.deliver(records, None)
    assert calls == [1201]
    assert len(taken) == len({*taken}) == 1201, "each event folded once"
    assert [m.topic for m in one_by_one] == [changelog.topic]
    assert worker.state.figures.summary()["funnel"]["stages"]["captured"] == 1200
    assert worker.state.figures.summary()["funnel"]["stages"]["qualified"] == 1
    assert (batch_consumer._read_offset[leads], batch_consumer._read_offset[qualified]) == (1199, 7)
    assert not batch_consumer._acked[leads], "nothing acked before the flush is stored"
    gate.set()
    await asyncio.wait_for(worker._batch_confirmer.drained(), 5)
    assert sorted(batch_consumer._acked[leads]) == list(range(1200))
    assert batch_consumer._acked[qualified] == [7]
    assert batch_consumer._new_offset(leads) == 1200, "faust commits past every folded offset"
    await batch_consumer.deliver(records, None)  # fetched again: nothing below the read offsets
    assert calls == [1201, 2]  # each partition's record at its read offset, as faust's ">=" has it
    assert worker._batch_confirmer is not None
    await worker._batch_confirmer.stop()


async def test_a_rebalance_stops_the_batch_and_only_what_was_taken_is_read(
    consumer, journey, monkeypatch
) -> None:
    """The flow stopped mid-batch (faust revoking partitions): the fold stops there and the read
    offset stays at the last event taken, so faust fetches the rest again after its seek."""
    worker, batch_consumer, _ = consumer
    take = worker._take_at_once
    taken: list[int] = []

    def stopping(record: Any, *args: Any) -> Any:
        taken.append(record.offset)
        outcome = take(record, *args)
        if record.offset == 4:
            batch_consumer.stop_flow()
        return outcome

    monkeypatch.setattr(worker, "_take_at_once", stopping)
    leads = TP(LEADS_EVENTS, 1)
    values = [journey.captured(f"lead-{n}").to_bytes() for n in range(10)]
    records = {leads: [record(LEADS_EVENTS, 1, n, value) for n, value in enumerate(values)]}
    await batch_consumer.deliver(records, None)
    assert taken == [0, 1, 2, 3, 4]
    assert batch_consumer._read_offset[leads] == 4
    assert worker.state.figures.summary()["funnel"]["stages"]["captured"] == 5
    assert worker._batch_confirmer is not None
    await worker._batch_confirmer.stop()


async def test_a_folded_event_awaits_the_policy_and_erasure_steps_only_when_it_is_one_of_theirs(
    journey, monkeypatch
) -> None:
    """``take`` of an ordinary event folds it and counts it, without awaiting the permission
    policy's and the erasure confirmation's steps (a class lookup, not two coroutines per event);
    those steps still run for their own events (their behaviour: the worker-process tests)."""
    from analytics import worker as worker_module
    from crm_contracts.events.governance import ErasureRequestedV1, PermissionsChangedV1

    assert set(worker_module.ACTS_ON) == {PermissionsChangedV1, ErasureRequestedV1}
    worker = make_worker()
    steps: list[str] = []

    async def step(*args: Any) -> None:
        steps.append(type(args[0]).__name__)

    monkeypatch.setattr(worker, "_keep_policy", step)
    monkeypatch.setattr(worker, "_confirm_erasure", step)
    for n in range(3):
        await worker.take(record(LEADS_EVENTS, 0, n, journey.captured(f"lead-{n}").to_bytes()))
    assert steps == []
    assert worker.state.figures.funnel["captured"] == 3
    assert worker_module._acts_on(object.__new__(PermissionsChangedV1))
    assert worker_module._acts_on(object.__new__(ErasureRequestedV1))


async def test_a_chunks_records_are_taken_without_a_coroutine_or_a_verdict_built_each(
    consumer, journey, monkeypatch
) -> None:
    """A fetched batch's chunk takes each record skipped unread or folded with nothing more to do
    without making and awaiting a coroutine for it (``_take``), and the fold builds no "not
    read" verdict per record; a record with more to do (here a dead letter to send) still gets
    its awaited steps (``_take_rest``), counted as before."""
    from analytics import worker as worker_module
    from crm_platform.dead_letters import Rejected

    worker, batch_consumer, _ = consumer

    take, coroutines = worker._take, []

    async def counting_take(record: Any) -> Any:
        coroutines.append(record.offset)
        return await take(record)

    monkeypatch.setattr(worker, "_take", counting_take)
    made: list[str] = []
    init = Rejected.__init__

    def counting_init(self: Rejected, *args: Any, **kwargs: Any) -> None:
        made.append(args[0] if args else kwargs["reason"])
        init(self, *args, **kwargs)

    monkeypatch.setattr(Rejected, "__init__", counting_init)
    letters: list[tuple[int, str]] = []

    async def dead_letter(message: Any, reason: str, error: str, event_type: str | None = None) -> None:
        letters.append((message.offset, reason))

    monkeypatch.setattr(worker, "dead_letter", dead_letter)
    counted: list[dict[tuple[str, str, str], int]] = []
    monkeypatch.setattr(worker.metrics, "consumed_many", lambda counts: counted.append(dict(counts)))
    leads = TP(LEADS_EVENTS, 2)
    values = [journey.captured(f"lead-{n}").to_bytes() for n in range(20)]
    values[7] = b"not json"
    skipped = record(LEADS_EVENTS, 2, 20, journey.captured("lead-x").to_bytes())
    skipped.headers = [("event_type", b"lead.behaviour_recorded")]  # a type analytics does not read
    records = {leads: [*(record(LEADS_EVENTS, 2, n, v) for n, v in enumerate(values)), skipped]}
    await batch_consumer.deliver(records, None)
    assert coroutines == [], "no coroutine made and awaited per record"
    assert letters == [(7, "malformed")]
    assert made == ["malformed"], "one verdict built: the refused record's own"
    assert worker.state.figures.funnel["captured"] == 19
    event_type = journey.captured("lead-0").event_type
    assert counted == [
        {(LEADS_EVENTS, event_type, "processed"): 19, (LEADS_EVENTS, "lead.behaviour_recorded", "skipped"): 1}
    ]
    assert Rejected("handler_error", "not read") == worker_module.NOT_READ
    assert worker._batch_confirmer is not None
    await worker._batch_confirmer.stop()


async def test_the_worker_parses_values_outside_the_string_cache_and_its_facts_share_their_strings(
    journey, monkeypatch
) -> None:
    """The worker's classification parses a record with pydantic-core's string cache for keys only
    (a stream's values are nearly all new: looking each up and replacing a cache entry cost more
    than it saved, 2.5 us of a replayed ``lead.qualified``); the strings the facts keep for long
    (a lead's channel, its record's channel, a receipt's handoff) are still one string each, not
    one per event (the worker holds them for every lead and receipt)."""
    import pydantic_core
    from analytics.domain.facts import LeadFacts, ReceiptFact

    parsed: list[object] = []
    from_json = pydantic_core.from_json

    def recording(raw: bytes, **kwargs: Any) -> Any:
        parsed.append(kwargs.get("cache_strings", "all"))
        return from_json(raw, **kwargs)

    monkeypatch.setattr(pydantic_core, "from_json", recording)
    worker = make_worker()
    leads = [f"lead-{n}" for n in range(3)]
    for n, lead in enumerate(leads):
        # Each event's bytes parsed apart: nothing shared but what the fold shares.
        await worker.take(record(LEAD_QUALIFIED, 0, n, journey.qualified(lead, "webina").to_bytes()))
        await worker.take(
            record(HANDOFF_RECEIPTS, 0, n, journey.receipt("lead-qualified", f"h-{n}", 0.2).to_bytes())
        )
    assert parsed == ["keys"] * 6
    state = worker.state
    facts = [cast(LeadFacts, state.leads[lead]) for lead in leads]
    assert len({id(fact.qualify_channel) for fact in facts}) == 1
    assert len({id(state.records[f"lead:{lead}"]["qualified"]["channel"]) for lead in leads}) == 1
    assert len({id(cast(ReceiptFact, state.receipts[f"h-{n}"]).handoff) for n in range(3)}) == 1
    assert [fact.qualify_channel for fact in facts] == ["webina"] * 3
    assert worker.state.figures.funnel["qualified"] == 3


async def test_after_a_large_fetch_the_next_fetch_and_its_fold_run_without_young_collections(
    consumer, journey
) -> None:
    """While the consumer catches up (its last fetch's batch held a tenth of a poll's most or
    more: a replay, a backlog), the next fetch and its fold run with the batch heap's young
    threshold (``crm_platform.heap.batch_heap``: the fetch's decoded records are alive until
    folded and acked, and young collections only walked and promoted them); after a small
    (live) fetch, with the process's own; the threshold is put back at each fetch's end."""
    import gc

    from crm_platform.heap import GC_BATCH_YOUNG_THRESHOLD

    worker, batch_consumer, _ = consumer
    own = gc.get_threshold()
    large = batch_consumer.catch_up_records()
    assert large == worker.app.conf.broker_max_poll_records // 10 == 1000
    assert not batch_consumer.catching_up
    with batch_consumer.fetch_heap():
        assert gc.get_threshold() == own
    leads = TP(LEADS_EVENTS, 0)
    values = [journey.captured(f"lead-{n}").to_bytes() for n in range(int(large) + 1)]
    await batch_consumer.deliver({leads: [record(LEADS_EVENTS, 0, n, v) for n, v in enumerate(values)]}, None)
    assert batch_consumer.catching_up
    with batch_consumer.fetch_heap():
        assert gc.get_threshold() == (GC_BATCH_YOUNG_THRESHOLD, *own[1:])
    assert gc.get_threshold() == own
    await batch_consumer.deliver({leads: [record(LEADS_EVENTS, 0, len(values), values[0])]}, None)
    assert not batch_consumer.catching_up
    with batch_consumer.fetch_heap():
        assert gc.get_threshold() == own
    assert worker.state.figures.funnel["captured"] == len(values)
    assert worker._batch_confirmer is not None
    await worker._batch_confirmer.stop()
