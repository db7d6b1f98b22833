"""The faust agent and the snapshot timer, in process (faust's ``agent.test_context()``)."""

from __future__ import annotations

import uuid
from typing import Any, cast

import pytest
from analytics.domain.engine import AnalyticsState
from analytics.settings import AnalyticsSettings
from analytics.store import MongoSnapshots
from analytics.worker import AnalyticsWorker
from crm_contracts.topics import LEADS_EVENTS
from crm_platform.dead_letters import Rejected
from crm_platform.mongo import connect


def make_worker(**env) -> AnalyticsWorker:
    settings = AnalyticsSettings(
        **{
            "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",
            "MONGODB_URI": "mongodb://127.0.0.1:9",
            "CRM_ANALYTICS_APP_ID": f"crm-analytics-unit-{uuid.uuid4().hex[:8]}",
            **env,
        }
    )
    worker = AnalyticsWorker(settings)
    # Plain dicts instead of faust tables: no changelog, hence no broker, needed here.
    worker.state = AnalyticsState()
    return worker


async def test_agent_folds_events_and_parks_bad_ones(journey, monkeypatch):
    worker = make_worker()
    parked = []

    async def dead_letter(message, reason, error, event_type=None):
        parked.append((reason, message.value))

    monkeypatch.setattr(worker, "dead_letter", dead_letter)
    async with worker.agent.test_context() as agent:
        for env in [
            journey.captured("lead-1"),
            journey.qualified("lead-1"),
            journey.qualified("lead-1"),
            journey.verdict("lead-1"),
        ]:
            await agent.put(env.to_bytes())
        await agent.put(b"{not json")
        await agent.put(b'{"event_type": "lead.captured"}')
    stages = worker.state.figures.summary()["funnel"]["stages"]
    assert stages == {"captured": 1, "qualified": 1, "accepted": 1, "won": 0, "onboarded": 0}
    assert parked == [("malformed", b"{not json"), ("schema_invalid", b'{"event_type": "lead.captured"}')]


def test_faust_app_settings_from_the_environment():
    worker = make_worker(KAFKA_BOOTSTRAP_SERVERS="k1:9092,k2:9092", CRM_ANALYTICS_APP_ID="crm-analytics-x")
    conf = worker.app.conf
    assert conf.id == "crm-analytics-x"
    assert [str(u) for u in conf.broker] == ["kafka://k1:9092", "kafka://k2:9092"]
    assert conf.store.scheme == "memory"
    assert conf.web_enabled is False
    assert worker.dlq_topic_name == "crm.dlq.analytics"
    assert all(t.use_partitioner for t in worker.tables.values())
    assert all(t.partitions == 6 for t in worker.tables.values())
    with_web = make_worker(CRM_ANALYTICS_WORKER_WEB_PORT="6099")
    assert with_web.app.conf.web_enabled is True
    assert with_web.app.conf.web_port == 6099


@pytest.mark.integration
async def test_snapshot_is_written_after_recovery_and_only_when_figures_change(mongodb_uri, journey):
    database = f"t_analytics_unit_{uuid.uuid4().hex[:10]}"
    worker = make_worker(MONGODB_URI=mongodb_uri, MONGODB_DATABASE=database)
    client = connect(mongodb_uri, "analytics-test")
    db = client[database]
    try:
        assert await worker.snapshot_tick() is False  # tables not recovered yet: never zeros
        assert await MongoSnapshots(db).latest() is None

        await worker._on_recover()
        assert await worker.snapshot_tick() is True  # the recovered figures, once
        assert await worker.snapshot_tick() is False  # nothing changed since

        message = type(
            "Message",
            (),
            {"value": journey.captured("lead-1", "web").to_bytes(), "topic": LEADS_EVENTS, "headers": []},
        )
        await worker.handle(message)
        assert await worker.snapshot_tick() is True
        await worker.handle(message)  # redelivered: no change, no write
        assert await worker.snapshot_tick() is False

        snapshot = await MongoSnapshots(db).latest()
        assert snapshot is not None
        assert snapshot.funnel["stages"]["captured"] == 1
        assert snapshot.channels == {
            "web": {"captured": 1, "qualified": 0, "accepted": 0, "won": 0, "onboarded": 0}
        }
        assert snapshot.updated_at is not None
    finally:
        await worker._on_before_shutdown(worker.app, signal=None)
        await client.close()


async def test_agent_dead_letters_poison_and_implausible_records_and_carries_on(journey, monkeypatch):
    worker = make_worker()
    parked = []

    async def dead_letter(message, reason, error, event_type=None):
        parked.append(reason)

    monkeypatch.setattr(worker, "dead_letter", dead_letter)
    absurd = journey.receipt("lead-qualified", "event-absurd", 1e8, when=0)
    negative = journey.receipt("lead-qualified", "event-negative", -3600.0, when=7200)
    async with worker.agent.test_context() as agent:
        await agent.put(b"[" * 1000 + b"]" * 1000)  # RecursionError in the old intake
        await agent.put(b'{"a": 1e400}')
        await agent.put(b"")
        await agent.put(absurd.to_bytes())
        await agent.put(negative.to_bytes())
        await agent.put(journey.receipt("lead-qualified", "event-ok", 0.004, when=60).to_bytes())
        await agent.put(journey.captured("lead-1").to_bytes())
    assert parked == ["too_deep", "malformed", "malformed", "implausible_time", "implausible_time"]
    summary = worker.state.figures.summary()
    assert summary["funnel"]["stages"]["captured"] == 1, "the records behind the poison were folded"
    assert summary["handoffs"]["lead-qualified"]["transport"]["count"] == 1
    p99 = summary["handoffs"]["lead-qualified"]["transport"]["p99"]
    assert p99 is not None
    assert p99 < 1


async def test_fold_never_raises(journey, monkeypatch):
    import analytics.worker as module

    worker = make_worker()

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the engine")

    monkeypatch.setattr(module, "apply", broken)
    message = type(
        "Message", (), {"value": journey.captured("lead-1").to_bytes(), "topic": LEADS_EVENTS, "headers": []}
    )
    verdict = worker.fold(message)
    assert isinstance(verdict, Rejected)
    assert (verdict.reason, verdict.event_type) == ("handler_error", "lead.captured")


async def test_a_crash_looping_agent_gives_up_once_its_restart_budget_is_spent():
    from analytics.worker import crash_loop_supervisor

    reasons: list[BaseException | None] = []
    supervisor_class = crash_loop_supervisor(3, 60.0, reasons.append)
    supervisor = supervisor_class(max_restarts=100.0, over=1.0)  # faust's own values are overridden

    class Crashing:
        crash_reason = RuntimeError("changelog unavailable")
        restarts = 0

        async def restart(self):
            self.restarts += 1

    service = cast(Any, Crashing())  # the supervisor only calls restart() and reads crash_reason
    for _ in range(3):
        await supervisor.restart_service(service)
    assert (service.restarts, reasons) == (3, []), "within the budget: restarted"
    for _ in range(3):
        await supervisor.restart_service(service)
    assert service.restarts == 3, "no restart once the budget is spent"
    assert reasons
    assert str(reasons[0]) == "changelog unavailable"


async def test_agent_continues_the_trace_each_event_carries(journey):
    """The worker's fold is a CONSUMER span, child of the ``traceparent`` in the record's headers."""
    from crm_platform import tracing
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    tracing.use_provider(provider)
    try:
        worker = make_worker()
        async with worker.agent.test_context() as agent:
            headers = [("traceparent", f"00-{trace_id}-{parent_id}-01".encode())]
            await agent.put(journey.captured("lead-traced").to_bytes(), headers=headers)
    finally:
        tracing.use_provider(None)
    (span,) = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CONSUMER]
    assert span.name.endswith(" process")  # test_context names its topic "<internal>"
    assert format(span.context.trace_id, "032x") == trace_id
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == parent_id


async def test_a_dead_letter_replayed_for_another_group_is_skipped(journey):
    """``crm-ops replay`` of another department's dead letter: the worker folded the original."""
    from crm_platform.dead_letters import REPLAY_FOR

    worker = make_worker()
    async with worker.agent.test_context() as agent:
        others = [(REPLAY_FOR, b"sales")]
        await agent.put(journey.captured("lead-replayed-elsewhere").to_bytes(), headers=others)
        ours = [(REPLAY_FOR, worker.settings.app_id.encode())]
        await agent.put(journey.captured("lead-replayed-here").to_bytes(), headers=ours)
    assert worker.state.figures.summary()["funnel"]["stages"]["captured"] == 1
    assert "lead-replayed-here" in worker.state.leads
    assert "lead-replayed-elsewhere" not in worker.state.leads


async def test_the_retention_timer_drops_old_records_once_the_tables_are_recovered() -> None:
    from datetime import timedelta

    from crm_contracts import utcnow

    worker = make_worker(CRM_RETENTION_DAYS='{"record": 30}')
    old, young = ((utcnow() - timedelta(days=d)).timestamp() for d in (31, 29))
    worker.state.records.update(
        {"ticket:old": {"opened": {"at": old}}, "ticket:young": {"opened": {"at": young}}}
    )
    assert await worker.retention_tick() == 0, "not before the tables are recovered"
    worker.recovered = True
    assert await worker.retention_tick() == 1
    assert set(worker.state.records) == {"ticket:young"}
    assert await make_worker().retention_tick() == 0  # no period configured: nothing expires


async def test_the_agent_folds_every_event_exactly_once(journey, monkeypatch):
    """One actor folds the stream; the confirmer only acks: no event is folded twice."""
    import analytics.worker as module

    worker = make_worker()
    folded: list[str] = []
    real_apply = module.apply

    def counting(state, envelope, event):
        folded.append(str(envelope.event_id))
        return real_apply(state, envelope, event)

    monkeypatch.setattr(module, "apply", counting)
    sent = [journey.captured(f"lead-{n}") for n in range(300)] + [journey.qualified("lead-7")]
    async with worker.agent.test_context() as agent:
        for env in sent:
            await agent.put(env.to_bytes())
    assert sorted(folded) == sorted(str(env.event_id) for env in sent)
    assert worker.state.figures.summary()["funnel"]["stages"]["captured"] == 300


async def test_records_of_types_analytics_does_not_fold_are_skipped_unread(journey, monkeypatch):
    """By their ``event_type`` header (analytics.domain.reads): not parsed, so not dead-lettered
    either; a record of a folded type, or without the header, is read and judged as before."""
    worker = make_worker()
    parked = []

    async def dead_letter(message, reason, error, event_type=None):
        parked.append((reason, message.value))

    monkeypatch.setattr(worker, "dead_letter", dead_letter)
    behaviour = journey.behaviour("lead-1")
    async with worker.agent.test_context() as agent:
        await agent.put(behaviour.to_bytes(), headers=behaviour.headers())
        await agent.put(b"{unread", headers=[("event_type", b"lead.behaviour_recorded")])
        await agent.put(b"{read", headers=[("event_type", b"lead.captured")])
        await agent.put(b"{no header")
        await agent.put(b"{garbled", headers=[("event_type", b"\xff\xfe")])
        captured = journey.captured("lead-1")
        await agent.put(captured.to_bytes(), headers=captured.headers())
    assert parked == [("malformed", b"{read"), ("malformed", b"{no header"), ("malformed", b"{garbled")]
    assert worker.state.figures.summary()["funnel"]["stages"]["captured"] == 1
