"""What marketing consumes: sales' verdict on the leads it was handed."""

from __future__ import annotations

from crm_contracts.access import CONSUMES
from crm_contracts.events.sales import LeadVerdictV1
from crm_platform.consumer import Handler
from crm_platform.runtime import Subscription

from leads.handlers import on_lead_verdict

DEPARTMENT = "marketing"
TOPICS = list(CONSUMES["leads"])  # declared once in the contracts (the Kafka ACLs use it)
HANDLERS: dict[str, Handler] = {
    LeadVerdictV1.event_type: on_lead_verdict,
}


def subscription() -> Subscription:
    # department="marketing": the platform records the lead-verdict handoff's
    # transport latency and emits the handoff.received receipt.
    return Subscription(topics=list(TOPICS), handlers=dict(HANDLERS), department=DEPARTMENT)
