"""The faust agent and the snapshot timer, in process (faust's ``agent.test_context()``)."""

from __future__ import annotations

import uuid

import pytest
from analytics import store
from analytics.domain.engine import AnalyticsState
from analytics.settings import AnalyticsSettings
from analytics.worker import AnalyticsWorker
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
        assert await store.read_snapshot(db) is None

        await worker._on_recover()
        assert await worker.snapshot_tick() is True  # the recovered figures, once
        assert await worker.snapshot_tick() is False  # nothing changed since

        message = type("Message", (), {"value": journey.captured("lead-1", "web").to_bytes()})
        await worker.handle(message)
        assert await worker.snapshot_tick() is True
        await worker.handle(message)  # redelivered: no change, no write
        assert await worker.snapshot_tick() is False

        summary = store.summary_from_document(await store.read_snapshot(db))
        assert summary["funnel"]["stages"]["captured"] == 1
        assert summary["channels"] == {
            "web": {"captured": 1, "qualified": 0, "accepted": 0, "won": 0, "onboarded": 0}
        }
        assert summary["updated_at"] is not None
    finally:
        await worker._on_before_shutdown(worker.app, signal=None)
        await client.close()
