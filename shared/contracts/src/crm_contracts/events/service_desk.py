"""Events owned by the service desk (customer service and customer success)."""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

from pydantic import Field

from crm_contracts import topics
from crm_contracts.base import Event
from crm_contracts.envelope import Timestamp


class OnboardingStartedV1(Event):
    event_type: ClassVar[str] = "account.onboarding_started"
    version: ClassVar[int] = 1
    topic: ClassVar[str] = topics.SERVICE_DESK_EVENTS

    account_id: str
    deal_id: str
    account_name: str
    csm: str
    checklist: list[str]

    def partition_key(self) -> str:
        return self.account_id


class OnboardingCompletedV1(Event):
    """Every onboarding checklist item of an account is done."""

    event_type: ClassVar[str] = "account.onboarding_completed"
    version: ClassVar[int] = 1
    topic: ClassVar[str] = topics.SERVICE_DESK_EVENTS

    account_id: str
    deal_id: str
    csm: str | None = None
    started_at: Timestamp
    completed_at: Timestamp
    duration_seconds: float = Field(ge=0, description="Onboarding started -> last item completed")

    def partition_key(self) -> str:
        return self.account_id


class TicketOpenedV1(Event):
    event_type: ClassVar[str] = "ticket.opened"
    version: ClassVar[int] = 1
    topic: ClassVar[str] = topics.SERVICE_DESK_EVENTS

    ticket_id: str
    account_id: str
    priority: str
    assignee: str

    def partition_key(self) -> str:
        return self.account_id


class TicketResolvedV1(Event):
    event_type: ClassVar[str] = "ticket.resolved"
    version: ClassVar[int] = 1
    topic: ClassVar[str] = topics.SERVICE_DESK_EVENTS

    ticket_id: str
    account_id: str
    first_response_seconds: float | None = None
    resolution_seconds: float
    first_response_breached: bool
    resolution_breached: bool

    def partition_key(self) -> str:
        return self.account_id


class TicketRatedV1(Event):
    event_type: ClassVar[str] = "ticket.rated"
    version: ClassVar[int] = 1
    topic: ClassVar[str] = topics.SERVICE_DESK_EVENTS

    ticket_id: str
    account_id: str
    csat: int = Field(ge=1, le=5)

    def partition_key(self) -> str:
        return self.account_id


class SignalKind(StrEnum):
    UPSELL = "upsell"
    RENEWAL = "renewal"


class UpsellSpottedV1(Event):
    """HANDOFF service desk -> sales: a chance to sell more to an account."""

    event_type: ClassVar[str] = "upsell.spotted"
    version: ClassVar[int] = 1
    topic: ClassVar[str] = topics.ACCOUNT_SIGNAL

    signal_id: str
    account_id: str
    deal_id: str
    account_name: str
    sales_owner: str = Field(description="The account's owner in sales (from the won deal)")
    kind: SignalKind
    description: str = Field(min_length=1)
    estimated_value: float | None = Field(default=None, ge=0)
    spotted_by: str

    def partition_key(self) -> str:
        return self.account_id


class CommitmentFlaggedV1(Event):
    """HANDOFF service desk -> sales: sales promised more than can be delivered."""

    event_type: ClassVar[str] = "commitment.flagged"
    version: ClassVar[int] = 1
    topic: ClassVar[str] = topics.ACCOUNT_SIGNAL

    flag_id: str
    account_id: str
    deal_id: str
    commitment_id: str
    reason: str = Field(min_length=1)
    flagged_by: str

    def partition_key(self) -> str:
        return self.account_id
