"""The worker's fetch pacing (analytics.worker.pace_consumers), without a broker."""

from __future__ import annotations

import pytest
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
