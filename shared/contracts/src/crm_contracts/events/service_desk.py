"""Events owned by the service desk (customer service and customer success)."""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

from pydantic import Field, model_validator

from crm_contracts import topics
from crm_contracts.base import Event
from crm_contracts.envelope import Timestamp
from crm_contracts.events.common import Money, Value
from crm_contracts.events.sales import ContractTerm
from crm_contracts.extensions import Extensions


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


class OnboardingStepCompletedV1(Event):
    """A CSM ticked one onboarding checklist item: customer success' first human step on a won
    deal is the earliest of these (the automatic ``account.onboarding_started`` is not one)."""

    event_type: ClassVar[str] = "account.onboarding_step_completed"
    version: ClassVar[int] = 1
    topic: ClassVar[str] = topics.SERVICE_DESK_EVENTS

    account_id: str
    deal_id: str
    item: str = Field(min_length=1, max_length=200, description="The checklist item's key")
    completed_by: str = Field(description="User id of the CSM who ticked it")
    completed_at: Timestamp
    remaining: int = Field(ge=0, description="Checklist items still open after this one")

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


class TicketOpenedV2(TicketOpenedV1):
    """v1 plus the ticket's custom field values (the extension map, ``crm_contracts.extensions``;
    text fields are never carried). A subclass of v1, so every consumer that handles v1
    handles v2."""

    version: ClassVar[int] = 2

    custom: Extensions = Field(default_factory=dict)


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


# --- accounts over their whole life: renewals, check-ins, health, surveys ----------------------


class RenewalOutcome(StrEnum):
    RENEWED = "renewed"
    DOWNGRADED = "downgraded"
    CHURNED = "churned"


class ChurnReason(StrEnum):
    PRICE = "price"
    COMPETITOR = "competitor"
    BUDGET_CUT = "budget_cut"
    PRODUCT_FIT = "product_fit"
    LOW_ADOPTION = "low_adoption"
    SERVICE_QUALITY = "service_quality"
    BUSINESS_CLOSED = "business_closed"
    OTHER = "other"


class RenewalRecordedV1(Event):
    """The outcome of an account's renewal: renewed (new value and term), downgraded, or churned."""

    event_type: ClassVar[str] = "account.renewal_recorded"
    version: ClassVar[int] = 1
    topic: ClassVar[str] = topics.SERVICE_DESK_EVENTS

    renewal_id: str
    account_id: str
    deal_id: str
    tier: str
    account_manager: str | None = Field(default=None, description="User id of the account manager/CSM")
    outcome: RenewalOutcome
    due_date: Timestamp = Field(description="The renewal date that was due")
    previous_value: Money
    new_term: ContractTerm | None = Field(default=None, description="Renewed or downgraded: the new term")
    churn_reason: ChurnReason | None = None
    recorded_by: str

    @model_validator(mode="after")
    def _outcome_fields(self) -> RenewalRecordedV1:
        if self.outcome == RenewalOutcome.CHURNED:
            if self.churn_reason is None or self.new_term is not None:
                raise ValueError("a churned renewal has a churn_reason and no new_term")
        elif self.new_term is None or self.churn_reason is not None:
            raise ValueError("a renewed or downgraded renewal has a new_term and no churn_reason")
        return self

    def partition_key(self) -> str:
        return self.account_id


class Sentiment(StrEnum):
    POSITIVE = "positive"
    NEUTRAL = "neutral"
    NEGATIVE = "negative"


class CheckInLoggedV1(Event):
    """A customer success check-in held with an account (notes and attendees stay in the desk)."""

    event_type: ClassVar[str] = "account.checkin_logged"
    version: ClassVar[int] = 1
    topic: ClassVar[str] = topics.SERVICE_DESK_EVENTS

    checkin_id: str
    account_id: str
    tier: str
    csm: str = Field(description="User id of who held it")
    held_at: Timestamp
    sentiment: Sentiment
    attendees: int = Field(ge=1, description="How many people attended")
    due_at: Timestamp | None = Field(default=None, description="When it was due by the tier's cadence")

    def partition_key(self) -> str:
        return self.account_id


class HealthBand(StrEnum):
    HEALTHY = "healthy"
    WATCH = "watch"
    AT_RISK = "at_risk"


class HealthReason(Value):
    component: str = Field(description="e.g. onboarding, tickets, sla, csat, nps, checkins, promises, usage")
    points: float = Field(description="What this component added (+) or took away (-)")
    detail: str


class HealthScoredV1(Event):
    """An account's health score changed, with the rules version and the reasons behind it."""

    event_type: ClassVar[str] = "account.health_scored"
    version: ClassVar[int] = 1
    topic: ClassVar[str] = topics.SERVICE_DESK_EVENTS

    account_id: str
    score: float = Field(ge=0, le=100)
    band: HealthBand
    rules_version: int = Field(ge=1)
    reasons: list[HealthReason]
    scored_at: Timestamp

    def partition_key(self) -> str:
        return self.account_id


class ChurnRiskChangedV1(Event):
    """The churn early warning was raised (``at_risk``) or cleared for an account."""

    event_type: ClassVar[str] = "account.churn_risk_changed"
    version: ClassVar[int] = 1
    topic: ClassVar[str] = topics.SERVICE_DESK_EVENTS

    account_id: str
    at_risk: bool
    signals: list[str] = Field(
        description="Codes of the warning signals that hold: falling_trend, detractor_nps, "
        "repeated_sla_breaches, overdue_renewal"
    )
    account_manager: str | None = None
    health_score: float | None = Field(default=None, ge=0, le=100)

    def partition_key(self) -> str:
        return self.account_id


class SurveyKind(StrEnum):
    CSAT = "csat"  # 1-5, after a ticket
    NPS = "nps"  # 0-10, on a schedule


class SurveyAnsweredV1(Event):
    """The customer answered a survey through its signed link (not typed by a rep)."""

    event_type: ClassVar[str] = "survey.answered"
    version: ClassVar[int] = 1
    topic: ClassVar[str] = topics.SERVICE_DESK_EVENTS

    survey_id: str
    account_id: str
    kind: SurveyKind
    score: int = Field(ge=0, le=10, description="CSAT 1-5, NPS 0-10")
    ticket_id: str | None = None
    has_comment: bool = False
    sent_at: Timestamp
    answered_at: Timestamp

    @model_validator(mode="after")
    def _score_in_range(self) -> SurveyAnsweredV1:
        if self.kind == SurveyKind.CSAT and not 1 <= self.score <= 5:
            raise ValueError("a CSAT score is 1 to 5")
        return self

    def partition_key(self) -> str:
        return self.account_id


# --- customer success intervening before the close ---------------------------------------------


class CommitmentDecisionKind(StrEnum):
    APPROVED = "approved"
    FLAGGED = "flagged"


class CommitmentDecision(Value):
    """A CSM's decision on one commitment of a reviewed deal; a flag always says why."""

    commitment_id: str = Field(min_length=1, max_length=100)
    decision: CommitmentDecisionKind
    reason: str | None = Field(default=None, max_length=2000)

    @model_validator(mode="after")
    def _a_flag_has_a_reason(self) -> CommitmentDecision:
        if self.decision == CommitmentDecisionKind.FLAGGED and not (self.reason or "").strip():
            raise ValueError("a flagged commitment needs a reason")
        return self


class CommitmentReviewCompletedV1(Event):
    """HANDOFF service desk -> sales: customer success' verdict on a commitment review.

    One decision per commitment of the request; ``outcome`` is ``approved`` when every
    commitment is approved, ``flagged`` when one or more is flagged (each with its reason).
    """

    event_type: ClassVar[str] = "commitment_review.completed"
    version: ClassVar[int] = 1
    topic: ClassVar[str] = topics.ACCOUNT_SIGNAL

    review_id: str = Field(min_length=1, max_length=100)
    deal_id: str = Field(min_length=1, max_length=100)
    outcome: CommitmentDecisionKind
    decisions: list[CommitmentDecision] = Field(max_length=200)
    reviewed_by: str
    reviewed_at: Timestamp

    @model_validator(mode="after")
    def _outcome_follows_the_decisions(self) -> CommitmentReviewCompletedV1:
        flagged = any(d.decision == CommitmentDecisionKind.FLAGGED for d in self.decisions)
        if self.outcome != (CommitmentDecisionKind.FLAGGED if flagged else CommitmentDecisionKind.APPROVED):
            raise ValueError("outcome must be 'flagged' when a decision is, else 'approved'")
        if len({d.commitment_id for d in self.decisions}) != len(self.decisions):
            raise ValueError("one decision per commitment")
        return self

    def partition_key(self) -> str:
        return self.deal_id
