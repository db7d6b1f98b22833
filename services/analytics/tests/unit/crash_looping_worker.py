"""Not collected (its name): run alone by ``test_analytics_worker_stop.py`` in a pytest process of
its own. A worker that gives up in a test (here a stand-in for ``_take_at_once`` with a stale
signature: every fetched chunk raises, as once happened in the batches tests), then a test after
it. With the worker's production stop (a SIGTERM to its own process) the first test ends the
whole run with no report; with the analytics tests' stop it fails, named, and the run goes on."""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from analytics.domain.engine import AnalyticsState
from analytics.settings import AnalyticsSettings
from analytics.worker import AnalyticsWorker
from crm_contracts.topics import LEADS_EVENTS


async def test_a_worker_that_gives_up(journey: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    worker = AnalyticsWorker(
        AnalyticsSettings(
            KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9",
            MONGODB_URI="mongodb://127.0.0.1:9",
            CRM_ANALYTICS_APP_ID=f"crm-analytics-unit-{uuid.uuid4().hex[:8]}",
        )
    )
    worker.state = AnalyticsState()
    take = worker._take_at_once

    def stale(record: Any) -> Any:  # the signature before a chunk passed its clock and switch
        return take(record)

    monkeypatch.setattr(worker, "_take_at_once", stale)
    value = journey.captured("lead-1").to_bytes()
    record = SimpleNamespace(topic=LEADS_EVENTS, partition=0, offset=0, headers=[], key=None, value=value)
    try:
        await worker.fold_batch([record], worker.app.consumer_generation_id)
    finally:
        if worker._batch_confirmer is not None:
            await worker._batch_confirmer.stop()


def test_after_it() -> None:
    print("the run went on")
