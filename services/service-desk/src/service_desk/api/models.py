"""Request and response bodies."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Literal

from crm_contracts.events.service_desk import SignalKind
from crm_platform.custom_fields_api import CustomIn, CustomOut, custom_out
from crm_platform.money import Amount, StoredAmount
from pydantic import BaseModel, ConfigDict, Field

from service_desk.domain.accounts import (
    Account,
    AccountCommitment,
    AccountContact,
    AccountProduct,
    AccountStatus,
    AccountValue,
    Assignment,
    CommitmentStatus,
    OnboardingStatus,
    Signal,
    TierChange,
)
from service_desk.domain.config import ConfigRecord, Priority, ServiceDeskConfig
from service_desk.domain.roster import CsmEntry, RosterRecord
from service_desk.domain.success_config import SuccessConfig
from service_desk.domain.terms import Term
from service_desk.domain.tickets import SlaState, Ticket, TicketStatus, sla_view


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- roster and config -----------------------------------------------------------------------


class RosterIn(Body):
    csms: list[CsmEntry] = Field(max_length=500, description="The whole roster (replaces it)")


class RosterOut(BaseModel):
    csms: list[CsmEntry]
    active: list[str] = Field(description="Active CSMs in round-robin order")
    updated_at: datetime | None = None
    updated_by: str | None = None

    @classmethod
    def of(cls, record: RosterRecord) -> RosterOut:
        return cls(
            csms=record.csms,
            active=[e.user_id for e in record.csms if e.active],
            updated_at=record.updated_at,
            updated_by=record.updated_by,
        )


class ConfigOut(ServiceDeskConfig):
    updated_at: datetime | None = None
    updated_by: str | None = None

    @classmethod
    def of(cls, record: ConfigRecord) -> ConfigOut:
        return cls(**record.config.model_dump(), updated_at=record.updated_at, updated_by=record.updated_by)


# --- accounts ----------------------------------------------------------------------------------


class CommitmentOut(BaseModel):
    commitment_id: str
    description: str
    due_date: datetime | None
    status: CommitmentStatus
    flag_id: str | None
    flag_reason: str | None
    flagged_by: str | None
    flagged_at: datetime | None
    delivered_by: str | None
    delivered_at: datetime | None
    sales_answer: str | None = Field(
        description="Sales' answer to the flag after the win: acknowledged | resolved"
    )
    sales_answered_by: str | None
    sales_acknowledged_at: datetime | None
    sales_resolved_at: datetime | None
    sales_resolution: str | None = Field(description="How sales sorted the flagged promise out")

    @classmethod
    def of(cls, c: AccountCommitment) -> CommitmentOut:
        return cls.model_validate(asdict(c))


class ChecklistItemOut(BaseModel):
    key: str = Field(description="Use in POST /accounts/{id}/checklist/{key}/complete")
    title: str
    completed: bool
    completed_at: datetime | None
    completed_by: str | None


class OnboardingOut(BaseModel):
    status: OnboardingStatus
    started_at: datetime
    completed_at: datetime | None
    duration_seconds: float | None
    checklist: list[ChecklistItemOut]


class SignalOut(BaseModel):
    signal_id: str
    kind: SignalKind
    description: str
    estimated_value: StoredAmount | None
    spotted_by: str
    spotted_at: datetime

    @classmethod
    def of(cls, s: Signal) -> SignalOut:
        return cls.model_validate(asdict(s))


class TermOut(BaseModel):
    start: datetime
    months: int
    renewal_date: datetime
    value: AccountValue
    source: str = Field(description="deal (from the won deal), default (the deal had none), renewal")

    @classmethod
    def of(cls, t: Term) -> TermOut:
        return cls(
            start=t.start,
            months=t.months,
            renewal_date=t.renewal_date,
            value=AccountValue(amount=t.amount, currency=t.currency),
            source=t.source,
        )


class AccountOut(BaseModel):
    account_id: str
    deal_id: str
    lead_id: str | None
    name: str
    contacts: list[AccountContact]
    products: list[AccountProduct]
    value: AccountValue
    sales_owner: str
    won_at: datetime
    csm: str | None
    commitments: list[CommitmentOut]
    onboarding: OnboardingOut
    signals: list[SignalOut]
    created_at: datetime
    term: TermOut | None = Field(
        description="The current contract term (from the won deal or the last renewal)"
    )
    tier: str
    account_manager: str | None = Field(description="User id of the named account manager")
    needs_account_manager: bool = Field(description="Its tier needs a named account manager and has none")
    status: AccountStatus
    churned_at: datetime | None
    assignments: list[Assignment] = Field(description="Every CSM / account manager change, oldest first")
    tier_changes: list[TierChange]

    @classmethod
    def of(cls, a: Account, success: SuccessConfig | None = None) -> AccountOut:
        ob = a.onboarding
        return cls(
            account_id=a.account_id,
            deal_id=a.deal_id,
            lead_id=a.lead_id,
            name=a.name,
            contacts=a.contacts,
            products=a.products,
            value=a.value,
            sales_owner=a.sales_owner,
            won_at=a.won_at,
            csm=a.csm,
            commitments=[CommitmentOut.of(c) for c in a.commitments],
            onboarding=OnboardingOut(
                status=ob.status,
                started_at=ob.started_at,
                completed_at=ob.completed_at,
                duration_seconds=ob.duration_seconds,
                checklist=[
                    ChecklistItemOut(
                        key=i.key,
                        title=i.title,
                        completed=i.done,
                        completed_at=i.completed_at,
                        completed_by=i.completed_by,
                    )
                    for i in ob.checklist
                ],
            ),
            signals=[SignalOut.of(s) for s in a.signals],
            created_at=a.created_at,
            term=TermOut.of(a.term) if a.term else None,
            tier=a.tier,
            account_manager=a.account_manager,
            needs_account_manager=a.needs_account_manager(success or SuccessConfig()),
            status=a.status,
            churned_at=a.churned_at,
            assignments=a.assignments,
            tier_changes=a.tier_changes,
        )


class AssignCsmIn(Body):
    user_id: str = Field(
        min_length=1,
        max_length=100,
        description="An active CSM's user id (the token's sub), as listed by the gateway's GET /users "
        "(admin); never a username",
    )


class SignalIn(Body):
    kind: SignalKind
    description: str = Field(min_length=1, max_length=4000)
    estimated_value: Amount | None = None


class FlagIn(Body):
    reason: str = Field(min_length=1, max_length=4000)


# --- tickets -----------------------------------------------------------------------------------


class TicketIn(Body):
    account_id: str = Field(min_length=1, max_length=100)
    subject: str = Field(min_length=1, max_length=300)
    request: str = Field(min_length=1, max_length=20000, description="What the customer asked for")
    priority: Priority = Priority.NORMAL
    assign_to: Literal["csm", "me"] = Field(
        default="csm",
        description="'csm': the account's CSM (the opening rep if the account has none); 'me': the rep",
    )
    custom: CustomIn = None


class TicketEditIn(Body):
    """``PATCH /tickets/{id}``: the ticket's custom field values to set (``null`` clears one)."""

    custom: CustomIn = None


class ProgressIn(Body):
    note: str = Field(min_length=1, max_length=20000)


class ResolveIn(Body):
    result: str = Field(min_length=1, max_length=20000)


class ProgressNoteOut(BaseModel):
    note: str
    by: str
    at: datetime


class SlaOut(BaseModel):
    state: SlaState | None = Field(description="on_track | at_risk | breached while open; null once resolved")
    first_response: SlaState
    resolution: SlaState
    first_response_due_at: datetime
    resolution_due_at: datetime
    first_response_breached: bool
    resolution_breached: bool


# Ticket fields TicketOut shows otherwise (progress notes as models; the due dates and breaches in ``sla``).
_TICKET_INTERNAL = frozenset(
    {
        "progress",
        "custom",
        "first_response_due_at",
        "resolution_due_at",
        "first_response_breached",
        "resolution_breached",
    }
)


class TicketOut(BaseModel):
    ticket_id: str
    account_id: str
    account_name: str
    subject: str
    request: str
    priority: Priority
    status: TicketStatus
    opened_by: str
    assignee: str
    opened_at: datetime
    first_response_at: datetime | None
    first_response_seconds: float | None
    progress: list[ProgressNoteOut]
    resolved_at: datetime | None
    resolved_by: str | None
    result: str | None
    resolution_seconds: float | None
    csat: int | None
    rated_at: datetime | None
    rated_by: str | None
    sla: SlaOut
    custom: CustomOut = Field(default_factory=dict)

    @classmethod
    def of(cls, t: Ticket, now: datetime, at_risk_fraction: float) -> TicketOut:
        view = sla_view(t, now, at_risk_fraction)
        return cls(
            **{k: v for k, v in asdict(t).items() if k not in _TICKET_INTERNAL},
            progress=[ProgressNoteOut(note=n.note, by=n.by, at=n.at) for n in t.progress],
            first_response_seconds=t.first_response_seconds,
            resolution_seconds=t.resolution_seconds,
            custom=custom_out(t.custom),
            sla=SlaOut(
                state=view.state,
                first_response=view.first_response,
                resolution=view.resolution,
                first_response_due_at=view.first_response_due_at,
                resolution_due_at=view.resolution_due_at,
                first_response_breached=view.first_response_breached,
                resolution_breached=view.resolution_breached,
            ),
        )
