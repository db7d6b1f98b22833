"""What marketing consumes: sales' verdict on the leads it was handed."""

from __future__ import annotations

from crm_contracts.access import CONSUMES
from crm_contracts.events.sales import LeadVerdictV1
from crm_platform.runtime import Subscription
from crm_platform.uow import MongoUnitOfWork, bind_event

from leads import action_items
from leads.handlers import on_lead_verdict
from leads.repository import LeadsUnit
from leads.settings import DEPARTMENT

TOPICS = list(CONSUMES["leads"])  # declared once in the contracts (the Kafka ACLs use it)


def subscription(uow: MongoUnitOfWork[LeadsUnit]) -> Subscription:
    # department="marketing": the platform records the lead-verdict handoff's
    # transport latency and emits the handoff.received receipt.
    return Subscription(
        topics=list(TOPICS),
        handlers={
            LeadVerdictV1.event_type: bind_event(uow, on_lead_verdict),
            **action_items.HANDLERS,  # action items customer success raised for marketing
        },
        department=DEPARTMENT,
    )
