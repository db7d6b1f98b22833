"""What sales consumes: qualified leads from marketing, account signals from the service desk."""

from __future__ import annotations

from crm_contracts.access import CONSUMES
from crm_contracts.events.leads import LeadQualifiedV1
from crm_contracts.events.service_desk import CommitmentFlaggedV1, UpsellSpottedV1
from crm_platform.consumer import Handler
from crm_platform.runtime import Subscription

from sales.handlers import on_commitment_flagged, on_lead_qualified, on_upsell_spotted

DEPARTMENT = "sales"
TOPICS = list(CONSUMES["sales"])  # declared once in the contracts (the Kafka ACLs use it)
HANDLERS: dict[str, Handler] = {
    LeadQualifiedV1.event_type: on_lead_qualified,
    UpsellSpottedV1.event_type: on_upsell_spotted,
    CommitmentFlaggedV1.event_type: on_commitment_flagged,
}


def subscription() -> Subscription:
    # department="sales": the platform records the transport latency of the
    # lead-qualified, upsell-spotted and commitment-flagged handoffs and emits
    # their handoff.received receipts.
    return Subscription(topics=list(TOPICS), handlers=dict(HANDLERS), department=DEPARTMENT)
