"""Events owned by sales."""

from __future__ import annotations

import calendar
from datetime import datetime
from enum import StrEnum
from typing import ClassVar

from pydantic import Field, model_validator

from crm_contracts import topics
from crm_contracts.base import Event
from crm_contracts.envelope import Timestamp
from crm_contracts.events.common import Contact, Money, SealedPerson, Value
from crm_contracts.extensions import Extensions


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


class OpportunityCreatedV2(OpportunityCreatedV1):
    """v1 plus how a directly created opportunity came in (issue 9: sales creates deals itself,
    from a referral or outbound work, not only from marketing's handoff or an upsell). A
    subclass of v1, so every consumer that handles v1 handles v2."""

    version: ClassVar[int] = 2

    origin: str = Field(description="'lead', 'upsell' or 'direct' (created by sales itself)")
    source: str | None = Field(
        default=None,
        description="For origin 'direct': referral, outbound, event, partner or other; null otherwise",
    )
    account_id: str | None = Field(
        default=None, description="For origin 'direct': sales' account (sales.account_created) it is for"
    )


class OpportunityCreatedV3(OpportunityCreatedV2):
    """v2 plus the opportunity's custom field values (the extension map,
    ``crm_contracts.extensions``; text fields are never carried). A subclass of v2, so every
    consumer that handles v1 or v2 handles v3. Opportunities opened from a handoff or an
    upsell carry an empty map: their custom fields are set later, by an edit."""

    version: ClassVar[int] = 3

    custom: Extensions = Field(default_factory=dict)


class SalesAccountCreatedV1(Event):
    """Sales opened an account (a customer company) itself: a referral or outbound prospect.

    No personal data: the company's name, never a person's."""

    event_type: ClassVar[str] = "sales.account_created"
    version: ClassVar[int] = 1
    topic: ClassVar[str] = topics.SALES_EVENTS

    account_id: str
    name: str
    owner: str
    source: str = Field(description="referral, outbound, event, partner or other")
    industry: str | None = None

    def partition_key(self) -> str:
        return self.account_id


class SalesAccountCreatedV2(SalesAccountCreatedV1):
    """v1 plus the account's custom field values (the extension map, ``crm_contracts.extensions``;
    text fields are never carried). A subclass of v1, so every consumer that handles v1
    handles v2."""

    version: ClassVar[int] = 2

    custom: Extensions = Field(default_factory=dict)


class SalesContactCreatedV1(Event):
    """Sales added a contact (a person at an account) itself, or by an import.

    Carries ids only: the person's name, email and phone stay in sales' database (erasure
    never has to chase them through the log)."""

    event_type: ClassVar[str] = "sales.contact_created"
    version: ClassVar[int] = 1
    topic: ClassVar[str] = topics.SALES_EVENTS

    contact_id: str
    account_id: str | None = None
    owner: str
    source: str = Field(description="referral, outbound, event, partner, other or import")

    def partition_key(self) -> str:
        return self.contact_id


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


def add_months(moment: datetime, months: int) -> datetime:
    """``moment`` plus whole calendar months; the 31st becomes the month's last day when needed."""
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    return moment.replace(year=year, month=month, day=min(moment.day, calendar.monthrange(year, month)[1]))


class ContractTerm(Value):
    """The contract a won deal (or a renewal) starts: when, how long, when it renews, its value."""

    start: Timestamp
    months: int = Field(ge=1, le=120, description="Length of the term in months")
    renewal_date: Timestamp = Field(description="When the contract is up for renewal")
    value: Money = Field(description="The contract's value over the term")

    @model_validator(mode="after")
    def _renews_after_it_starts(self) -> ContractTerm:
        if self.renewal_date <= self.start:
            raise ValueError("renewal_date must be after start")
        return self

    @classmethod
    def starting(cls, start: datetime, months: int, value: Money) -> ContractTerm:
        """A term renewing ``months`` calendar months after ``start``."""
        return cls(start=start, months=months, renewal_date=add_months(start, months), value=value)


class DealWonV2(DealWonV1):
    """HANDOFF sales -> customer success: v1 plus the contract's term (optional, so v1 readers'
    data stays valid). A subclass of v1, so every consumer that handles v1 handles v2."""

    version: ClassVar[int] = 2

    term: ContractTerm | None = Field(
        default=None, description="The contract term sales closed (start, months, renewal date, value)"
    )


class DealWonV3(DealWonV2):
    """HANDOFF sales -> customer success: v2 with each contact's name, e-mail and phone sealed
    (issue 9, crypto-shredding) under sales' data key for that person (``crm.sales.person-keys``):
    ``sealed_contacts[i]`` is ``contacts[i]``'s, whose plaintext fields hold stand-ins (the role
    stays plain)."""

    version: ClassVar[int] = 3

    sealed_contacts: list[SealedPerson] = Field(
        default_factory=list,
        max_length=200,
        description="Per contact (same order), its name, e-mail and phone sealed with its data key",
    )

    @model_validator(mode="after")
    def _one_seal_per_contact(self) -> DealWonV3:
        if self.sealed_contacts and len(self.sealed_contacts) != len(self.contacts):
            raise ValueError("sealed_contacts must have one entry per contact")
        return self


class CommitmentReviewRequestedV1(Event):
    """HANDOFF sales -> customer success: review the commitments of a deal before it is won.

    A deal whose value or number of commitments reaches sales' configured threshold cannot
    be won until customer success has approved what sales promised. ``commitments`` are
    the ones the review covers (the deal's at the time of the request, with their ids);
    ``reasons`` say which threshold made the review required (empty when sales asked
    without one being crossed). A later request for the same deal supersedes this one.
    """

    event_type: ClassVar[str] = "commitment_review.requested"
    version: ClassVar[int] = 1
    topic: ClassVar[str] = topics.COMMITMENT_REVIEWS

    review_id: str = Field(min_length=1, max_length=100)
    deal_id: str = Field(min_length=1, max_length=100, description="The opportunity (the deal once won)")
    account_name: str
    sales_owner: str
    value: Money | None = Field(default=None, description="The deal's value when requested, if set")
    commitments: list[Commitment] = Field(max_length=200)
    reasons: list[str] = Field(default_factory=list, max_length=10)
    requested_by: str
    requested_at: Timestamp

    def partition_key(self) -> str:
        return self.deal_id


class CommitmentFlagStatus(StrEnum):
    ACKNOWLEDGED = "acknowledged"  # sales has seen the flag and owns sorting it out
    RESOLVED = "resolved"  # sales has sorted it out with the customer: how, in ``resolution``


class CommitmentFlagUpdatedBySalesV1(Event):
    """HANDOFF sales -> customer success: after the win, sales acknowledged or resolved a commitment
    customer success flagged (``commitment.flagged``); the account shows it."""

    event_type: ClassVar[str] = "commitment_flag.updated_by_sales"
    version: ClassVar[int] = 1
    topic: ClassVar[str] = topics.COMMITMENT_REVIEWS

    flag_id: str = Field(min_length=1, max_length=100)
    deal_id: str = Field(min_length=1, max_length=100)
    account_id: str = Field(min_length=1, max_length=100)
    commitment_id: str = Field(min_length=1, max_length=100)
    status: CommitmentFlagStatus
    resolution: str | None = Field(
        default=None, max_length=2000, description="How it was sorted out; required when resolved"
    )
    acted_by: str = Field(description="User id of who acted in sales")
    acted_at: Timestamp
    flagged_at: Timestamp = Field(description="When customer success flagged it")

    @model_validator(mode="after")
    def _a_resolution_says_how(self) -> CommitmentFlagUpdatedBySalesV1:
        if self.status == CommitmentFlagStatus.RESOLVED and not (self.resolution or "").strip():
            raise ValueError("resolution is required when status is 'resolved'")
        return self

    def partition_key(self) -> str:
        return self.account_id
