"""What sales consumes: qualified leads from marketing, account signals from the service desk.

An adapter: each event type maps to its handler, bound to the platform consumer's
transaction (``crm_platform.uow.bind_event``: the ledger entry, the effect, the
emitted events and the handoff receipt commit together).
"""

from __future__ import annotations

from crm_contracts.access import CONSUMES
from crm_contracts.events.leads import LeadQualifiedV1
from crm_contracts.events.service_desk import (
    CommitmentFlaggedV1,
    CommitmentReviewCompletedV1,
    UpsellSpottedV1,
)
from crm_platform.erasure import Target
from crm_platform.runtime import Subscription
from crm_platform.uow import MongoUnitOfWork, bind_event

from sales import action_items
from sales.handlers import (
    on_commitment_flagged,
    on_commitment_review_completed,
    on_lead_qualified,
    on_upsell_spotted,
)
from sales.repository import SalesUnit
from sales.settings import DEPARTMENT
from sales.store import preload_handoff

TOPICS = list(CONSUMES["sales"])  # declared once in the contracts (the Kafka ACLs use it)


def subscription(uow: MongoUnitOfWork[SalesUnit], erasure_targets: tuple[Target, ...] = ()) -> Subscription:
    # department="sales": the platform records the transport latency of the
    # lead-qualified, upsell-spotted, commitment-flagged and commitment-review-completed
    # handoffs and emits their handoff.received receipts.
    handlers = {
        # The lead's inbox items and a lone handoff's turn beside its held key (two round trips fewer).
        LeadQualifiedV1.event_type: bind_event(uow, on_lead_qualified, preload=preload_handoff),
        UpsellSpottedV1.event_type: bind_event(uow, on_upsell_spotted),
        CommitmentFlaggedV1.event_type: bind_event(uow, on_commitment_flagged),
        CommitmentReviewCompletedV1.event_type: bind_event(uow, on_commitment_review_completed),
        **action_items.HANDLERS,  # action items customer success raised for sales
    }
    return Subscription(
        topics=list(TOPICS), handlers=handlers, department=DEPARTMENT, erasure_targets=erasure_targets
    )
