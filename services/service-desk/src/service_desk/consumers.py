"""What the service desk consumes: won deals and commitment reviews from sales, and what the
other departments did with the action items customer success raised.

An adapter: each event type maps to its handler, bound to the platform consumer's
transaction (``crm_platform.uow.bind_event``: the ledger entry, the effect, the emitted
events and the handoff receipt commit together).
"""

from __future__ import annotations

from crm_contracts.access import CONSUMES
from crm_contracts.events.action_items import CUSTOMER_SUCCESS, UPDATED_BY_DEPARTMENT
from crm_contracts.events.sales import CommitmentFlagUpdatedBySalesV1, CommitmentReviewRequestedV1, DealWonV1
from crm_platform.erasure import Target
from crm_platform.runtime import Subscription
from crm_platform.uow import MongoUnitOfWork, bind_event

from service_desk.handlers.accounts import on_deal_won
from service_desk.handlers.action_items import on_outcome
from service_desk.handlers.reviews import on_flag_answered, on_review_requested
from service_desk.repository import SuccessUnit
from service_desk.settings import DEPARTMENT

TOPICS: list[str] = list(CONSUMES["service-desk"])  # declared once in the contracts (the Kafka ACLs use it)


def subscription(uow: MongoUnitOfWork[SuccessUnit], erasure_targets: tuple[Target, ...] = ()) -> Subscription:
    # department="customer-success": the platform records the transport latency of the deal-won,
    # commitment-review-requested, commitment-flag-outcome and action-item-outcome handoffs and
    # emits their receipts.
    handlers = {
        DealWonV1.event_type: bind_event(uow, on_deal_won),
        CommitmentReviewRequestedV1.event_type: bind_event(uow, on_review_requested),
        CommitmentFlagUpdatedBySalesV1.event_type: bind_event(uow, on_flag_answered),
        # what marketing and sales did with the action items customer success raised
        **{
            UPDATED_BY_DEPARTMENT[d].event_type: bind_event(uow, on_outcome)
            for d in UPDATED_BY_DEPARTMENT
            if d != CUSTOMER_SUCCESS
        },
    }
    return Subscription(
        topics=list(TOPICS), handlers=handlers, department=DEPARTMENT, erasure_targets=erasure_targets
    )
