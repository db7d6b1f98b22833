"""What the service desk consumes: event type -> handler, for the platform consumer."""

from __future__ import annotations

from crm_contracts.access import CONSUMES
from crm_contracts.events.sales import CommitmentReviewRequestedV1, DealWonV1
from crm_platform.clock import Clock
from crm_platform.consumer import Handler
from crm_platform.uow import MongoUnitOfWork, bind_event

from service_desk import action_items
from service_desk.handlers import deal_won_handler
from service_desk.repository import SuccessUnit
from service_desk.reviews import on_review_requested

TOPICS: list[str] = list(CONSUMES["service-desk"])  # declared once in the contracts (the Kafka ACLs use it)


def handlers(clock: Clock, uow: MongoUnitOfWork[SuccessUnit]) -> dict[str, Handler]:
    return {
        DealWonV1.event_type: deal_won_handler(clock),
        CommitmentReviewRequestedV1.event_type: bind_event(uow, on_review_requested),
        **action_items.HANDLERS,
    }
