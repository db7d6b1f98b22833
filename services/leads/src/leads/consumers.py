"""What marketing consumes: sales' verdict on the leads it was handed, and which rep each was
assigned to (``sales.lead_assigned`` on sales' events: a rep reads only their own leads)."""

from __future__ import annotations

from crm_contracts.access import CONSUMES
from crm_contracts.events.sales import LeadAssignedV1, LeadVerdictV1
from crm_platform.erasure import Target
from crm_platform.runtime import Subscription
from crm_platform.uow import MongoUnitOfWork, bind_event

from leads import action_items
from leads.handlers import on_lead_assigned, on_lead_verdict
from leads.repository import LeadsUnit
from leads.settings import DEPARTMENT

TOPICS = list(CONSUMES["leads"])  # declared once in the contracts (the Kafka ACLs use it)


def subscription(uow: MongoUnitOfWork[LeadsUnit], erasure_targets: tuple[Target, ...] = ()) -> Subscription:
    # department="marketing": the platform records the lead-verdict handoff's
    # transport latency and emits the handoff.received receipt.
    return Subscription(
        topics=list(TOPICS),
        handlers={
            LeadVerdictV1.event_type: bind_event(uow, on_lead_verdict),
            # sales' other events on crm.sales.events have no handler here: skipped, no transaction
            LeadAssignedV1.event_type: bind_event(uow, on_lead_assigned),
            **action_items.HANDLERS,  # action items customer success raised for marketing
        },
        department=DEPARTMENT,
        erasure_targets=erasure_targets,  # erasure requests: the platform's handler erases these
        # An assignment as old as the stored one or older changes nothing (Lead.assign): a
        # repeat needs no ledger entry to be harmless (one insert fewer per handoff).
        unledgered=frozenset({LeadAssignedV1.event_type}),
    )
