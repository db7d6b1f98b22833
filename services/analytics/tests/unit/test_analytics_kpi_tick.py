"""The worker's KPI timer (analytics.worker.kpi_tick) without a broker or a database: what the
records alone give (analytics.domain.kpis.derive) is computed again only when a record changed
or the tables were recovered; an idle tick walks no record and writes the same figures."""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import pytest
from analytics import worker as worker_module
from analytics.domain import kpis
from analytics.domain.engine import AnalyticsState, apply
from analytics.settings import AnalyticsSettings
from analytics.worker import AnalyticsWorker
from crm_contracts import decode, envelope_for
from crm_contracts.events.common import Consent
from crm_contracts.events.leads import LeadCapturedV1
from crm_contracts.topics import LEADS_EVENTS

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


class Reports:
    """Stands in for MongoKpis: keeps what each tick saved."""

    saved: list[Any] = []

    def __init__(self, db: Any) -> None:
        pass

    async def save(self, report: Any) -> None:
        Reports.saved.append(report)


class Message(NamedTuple):
    """What the worker's fold reads of a Kafka message."""

    value: bytes
    topic: str


def captured(lead_id: str, channel: str) -> LeadCapturedV1:
    return LeadCapturedV1(
        lead_id=lead_id,
        email=f"{lead_id}@example.com",
        name="Ada",
        company="Acme",
        source_channel=channel,
        consent=Consent(marketing_email=True),
        merged=False,
    )


@pytest.fixture
def ticking(monkeypatch: pytest.MonkeyPatch) -> tuple[AnalyticsWorker, list[int]]:
    worker = AnalyticsWorker(
        AnalyticsSettings(
            KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9",
            MONGODB_URI="mongodb://127.0.0.1:9",
            CRM_ANALYTICS_APP_ID=f"crm-analytics-unit-{uuid.uuid4().hex[:8]}",
        )
    )
    worker.recovered = True
    worker._mongo = defaultdict(lambda: None)  # type: ignore[assignment]  # Reports reads nothing
    Reports.saved = []
    monkeypatch.setattr(worker_module, "MongoKpis", Reports)
    walks: list[int] = []
    real = kpis.derive

    def counted(records: Any) -> kpis.Derived:
        walks.append(len(records))
        return real(records)

    monkeypatch.setattr(kpis, "derive", counted)
    return worker, walks


def fold(worker: AnalyticsWorker | AnalyticsState, lead_id: str, channel: str = "web") -> None:
    event = captured(lead_id, channel)
    envelope = envelope_for(event, source="leads", correlation_id="c", occurred_at=NOW - timedelta(days=1))
    apply(worker.state if isinstance(worker, AnalyticsWorker) else worker, envelope, decode(envelope))


async def test_an_idle_tick_walks_no_record_and_writes_the_same_figures(ticking) -> None:
    worker, walks = ticking
    fold(worker, "a")
    fold(worker, "b")
    for _ in range(4):
        assert await worker.kpi_tick()
    # The first tick after a change walks them and keeps the walk (a fold lets it go: the
    # worker's peak RSS); the ticks after it, nothing changed, walk none. It used to take two
    # walks, the second in the platform's idle window after the load.
    assert walks == [2]
    first, *later = Reports.saved
    for report in later:
        assert report.kpis["marketing"] == first.kpis["marketing"]
        assert report.kpis["marketing"]["channels"]["web"]["captured"] == 2


async def test_a_changed_record_or_a_recovery_walks_the_records_again(ticking) -> None:
    worker, walks = ticking
    fold(worker, "a")
    assert await worker.kpi_tick()  # kept from here on
    assert await worker.kpi_tick()
    fold(worker, "b", channel="event")
    assert await worker.kpi_tick()
    assert Reports.saved[-1].kpis["marketing"]["channels"]["event"]["captured"] == 1
    assert await worker.kpi_tick()
    assert walks == [1, 2]
    await worker._on_recover()  # the tables recovered: records may have changed behind the version
    assert await worker.kpi_tick()
    assert walks == [1, 2, 2]


def test_the_kpis_from_what_was_derived_are_the_kpis_from_the_records() -> None:
    state = AnalyticsState()
    fold(state, "a")
    fold(state, "b", channel="event")
    assert kpis.compute(kpis.derive(state.records), NOW) == kpis.compute(state.records, NOW)


async def test_the_walk_is_let_go_by_the_first_fold_that_changes_a_record(ticking) -> None:
    """Nothing is held between ticks while the records change (under load: the worker's peak
    RSS); the walk a tick kept goes with the worker's first fold that changes a record."""
    worker, walks = ticking
    worker.fold(Message(b"not an envelope", LEADS_EVENTS))  # rejected: no record changed
    assert await worker.kpi_tick()
    assert worker._kpi_inputs._derived is not None
    worker.fold(Message(b"not an envelope", LEADS_EVENTS))
    assert worker._kpi_inputs._derived is not None, "a fold that changed no record keeps it"
    envelope = envelope_for(captured("a", "web"), source="leads", correlation_id="c", occurred_at=NOW)
    worker.fold(Message(envelope.to_bytes(), LEADS_EVENTS))
    assert worker._kpi_inputs._derived is None
    assert await worker.kpi_tick()
    assert Reports.saved[-1].kpis["marketing"]["channels"]["web"]["captured"] == 1
    assert walks == [0, 1]


def test_a_kept_walk_is_let_go_only_when_the_version_moved() -> None:
    cache = kpis.DerivedCache()
    records: dict[str, Any] = {"lead:a": {}}
    kept = cache.get((1, 0), lambda: records)
    cache.release((1, 0))
    assert cache.get((1, 0), lambda: {}) is kept
    cache.release((2, 0))
    assert cache._derived is None


async def test_while_the_worker_catches_up_the_kpis_wait_a_few_ticks_then_publish(ticking) -> None:
    """A full fetch (a replay, a backlog) defers the KPI tick, at most
    ``KPI_TICKS_DEFERRED_AT_MOST`` ticks in a row: then the KPIs are published anyway; once a
    fetch comes back short, or no batch came since the last tick (the log ended on a full fetch),
    every tick publishes again, with every folded record."""
    worker, walks = ticking
    fold(worker, "a")
    worker.catching_up = True
    ticks = []
    for _ in range(2 * (worker_module.KPI_TICKS_DEFERRED_AT_MOST + 1)):
        worker._batches_since_kpis += 1  # a full fetch folded between two ticks
        ticks.append(await worker.kpi_tick())
    assert ticks == ([False] * worker_module.KPI_TICKS_DEFERRED_AT_MOST + [True]) * 2
    assert len(Reports.saved) == 2
    worker._batches_since_kpis += 1
    assert not await worker.kpi_tick()
    assert await worker.kpi_tick(), "no batch since the last tick: caught up"
    fold(worker, "b")
    worker.catching_up = False
    worker._batches_since_kpis += 1
    assert await worker.kpi_tick()
    assert Reports.saved[-1].kpis["marketing"]["channels"]["web"]["captured"] == 2
    assert walks == [1, 2]  # the second and third publications read what the first kept


async def test_a_full_fetch_says_the_worker_catches_up_a_short_one_that_it_caught_up(
    journey, monkeypatch
) -> None:
    from .test_analytics_batches import make_worker, record

    worker = make_worker()
    monkeypatch.setattr(worker_module, "MAX_POLL_RECORDS", 3)
    full = [record("crm.leads.events", 0, n, journey.captured(f"lead-{n}").to_bytes()) for n in range(3)]
    await worker.fold_batch(full, worker.app.consumer_generation_id)
    assert worker.catching_up
    await worker.fold_batch(full[:2], worker.app.consumer_generation_id)
    assert not worker.catching_up
    assert worker._batch_confirmer is not None
    await worker._batch_confirmer.stop()
