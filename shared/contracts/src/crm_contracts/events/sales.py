"""Events owned by sales."""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

from pydantic import Field, model_validator

from crm_contracts import topics
from crm_contracts.base import Event
from crm_contracts.envelope import Timestamp
from crm_contracts.events.common import Contact, Money, Value


class Verdict(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    RECYCLED = "recycled"


class RejectReason(StrEnum):
    NO_BUDGET = "no_budget"
    NO_AUTHORITY = "no_authority"
    NO_NEED = "no_need"
    BAD_TIMING = "bad_timing"
    COMPETITOR = "competitor"
    BAD_DATA = "bad_data"
    DUPLICATE = "duplicate"
    NOT_A_FIT = "not_a_fit"


class LeadVerdictV1(Event):
    """HANDOFF sales -> marketing: what sales made of a qualified lead."""

    event_type: ClassVar[str] = "lead.verdict"
    version: ClassVar[int] = 1
    topic: ClassVar[str] = topics.LEAD_VERDICT

    lead_id: str
    verdict: Verdict
    reason_code: RejectReason | None = None
    note: str | None = None
    decided_by: str
    opportunity_id: str | None = None

    @model_validator(mode="after")
    def _reason_required_for_rejection(self) -> LeadVerdictV1:
        if self.verdict == Verdict.REJECTED and self.reason_code is None:
            raise ValueError("reason_code is required when verdict is 'rejected'")
        return self

    def partition_key(self) -> str:
        return self.lead_id


class LeadAssignedV1(Event):
    event_type: ClassVar[str] = "sales.lead_assigned"
    version: ClassVar[int] = 1
    topic: ClassVar[str] = topics.SALES_EVENTS

    lead_id: str
    owner: str
    response_due_at: Timestamp

    def partition_key(self) -> str:
        return self.lead_id


class OpportunityCreatedV1(Event):
    event_type: ClassVar[str] = "opportunity.created"
    version: ClassVar[int] = 1
    topic: ClassVar[str] = topics.SALES_EVENTS

    opportunity_id: str
    account_name: str
    owner: str
    stage: str
    origin: str = Field(description="'lead' or 'upsell'")
    lead_id: str | None = None
    signal_id: str | None = None
    amount: float | None = None

    def partition_key(self) -> str:
        return self.opportunity_id


class OpportunityStageChangedV1(Event):
    event_type: ClassVar[str] = "opportunity.stage_changed"
    version: ClassVar[int] = 1
    topic: ClassVar[str] = topics.SALES_EVENTS

    opportunity_id: str
    from_stage: str
    to_stage: str
    owner: str
    amount: float | None = None

    def partition_key(self) -> str:
        return self.opportunity_id


class ActivityLoggedV1(Event):
    event_type: ClassVar[str] = "opportunity.activity_logged"
    version: ClassVar[int] = 1
    topic: ClassVar[str] = topics.SALES_EVENTS

    opportunity_id: str
    activity_id: str
    activity_type: str
    owner: str

    def partition_key(self) -> str:
        return self.opportunity_id


class OpportunityLostV1(Event):
    event_type: ClassVar[str] = "opportunity.lost"
    version: ClassVar[int] = 1
    topic: ClassVar[str] = topics.SALES_EVENTS

    opportunity_id: str
    reason: str
    owner: str

    def partition_key(self) -> str:
        return self.opportunity_id


class Product(Value):
    sku: str
    name: str
    quantity: int = Field(ge=1)
    unit_price: float = Field(ge=0)


class Commitment(Value):
    commitment_id: str
    description: str = Field(min_length=1)
    due_date: Timestamp | None = None


class DealWonV1(Event):
    """HANDOFF sales -> customer success: the deal and what sales promised."""

    event_type: ClassVar[str] = "deal.won"
    version: ClassVar[int] = 1
    topic: ClassVar[str] = topics.DEAL_WON

    deal_id: str
    lead_id: str | None = None
    account_name: str
    contacts: list[Contact]
    products: list[Product] = Field(min_length=1)
    value: Money
    commitments: list[Commitment]
    sales_owner: str
    won_at: Timestamp

    def partition_key(self) -> str:
        return self.deal_id
