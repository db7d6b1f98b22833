"""What the service desk consumes: event type -> handler, for the platform consumer."""

from __future__ import annotations

from crm_contracts.access import CONSUMES
from crm_contracts.events.sales import DealWonV1
from crm_platform.clock import Clock
from crm_platform.consumer import Handler

from service_desk import action_items
from service_desk.handlers import deal_won_handler

TOPICS: list[str] = list(CONSUMES["service-desk"])  # declared once in the contracts (the Kafka ACLs use it)


def handlers(clock: Clock) -> dict[str, Handler]:
    return {DealWonV1.event_type: deal_won_handler(clock), **action_items.HANDLERS}
