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
