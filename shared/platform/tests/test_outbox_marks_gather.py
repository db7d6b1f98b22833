"""How long a service's relay gathers its "published" marks (crm_platform.outbox.MARKS_GATHER_SECONDS):
half a second, so a trickle of handoffs at 25/s is two mark writes a second in each relay (and in
a sending service two handoffs_sent record writes beside them), not ten. No broker, no database."""

from __future__ import annotations

from crm_platform.runtime import ServiceRuntime, Subscription
from crm_platform.settings import ServiceSettings
from crm_platform.testing import OFFLINE_SETTINGS


def test_a_services_relay_gathers_its_marks_over_half_a_second() -> None:
    settings = ServiceSettings.model_validate({**OFFLINE_SETTINGS, "CRM_SERVICE_NAME": "leads"})
    runtime = ServiceRuntime(
        settings, subscription=Subscription(topics=["crm.test.marks"], handlers={}, department="marketing")
    )
    assert runtime.relay.marks_gather_seconds == 0.5
