"""A customer account after the deal is won: onboarding, commitments, signals.

Everything here is pure: callers pass identifiers and the current time in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from crm_contracts.events.sales import (
    CommitmentFlagStatus,
    CommitmentFlagUpdatedBySalesV1,
    DealWonV1,
    DealWonV2,
)
from crm_contracts.events.service_desk import (
    CommitmentFlaggedV1,
    OnboardingCompletedV1,
    OnboardingStartedV1,
    OnboardingStepCompletedV1,
    Sentiment,
    SignalKind,
    UpsellSpottedV1,
)
from crm_platform.errors import Conflict, NotFound, RuleViolation
from crm_platform.money import StoredAmount, to_amount, to_wire

from service_desk.domain.config import slugify
from service_desk.domain.health import HealthState
from service_desk.domain.success_config import SuccessConfig, TierConfig
from service_desk.domain.terms import Term

UNASSIGNED = "unassigned"  # the CSM named in onboarding_started when nobody is on the roster


class CommitmentStatus(StrEnum):
    OPEN = "open"
    DELIVERED = "delivered"
    FLAGGED = "flagged"


class OnboardingStatus(StrEnum):
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"


class AccountStatus(StrEnum):
    ACTIVE = "active"
    CHURNED = "churned"


class AssignmentRole(StrEnum):
    CSM = "csm"
    ACCOUNT_MANAGER = "account_manager"


@dataclass(kw_only=True)
class Assignment:
    """One recorded reassignment (who held the account before, who holds it now, who decided)."""

    role: AssignmentRole
    from_user: str | None
    to_user: str | None
    by: str
    at: datetime
    reason: str | None = None


@dataclass(kw_only=True)
class Usage:
    """Usage signals, when the product reports them: licences in use of those bought."""

    active_users: int
    licensed_users: int
    as_of: datetime

    def __post_init__(self) -> None:
        if self.active_users < 0 or self.licensed_users < 1:
            raise RuleViolation(
                "usage needs active_users >= 0 and licensed_users >= 1", field="licensed_users"
            )

    @property
    def ratio(self) -> float:
        return min(1.0, self.active_users / self.licensed_users)


@dataclass(kw_only=True)
class TierChange:
    from_tier: str | None
    to_tier: str
    by: str
    at: datetime


@dataclass(kw_only=True)
class AccountContact:
    name: str
    email: str
    phone: str | None = None
    role: str | None = None


@dataclass(kw_only=True)
class AccountProduct:
    sku: str
    name: str
    quantity: int
    unit_price: StoredAmount


@dataclass(kw_only=True)
class AccountValue:
    """Exact money (crm_platform.money): Decimal here, Decimal128 stored, a JSON number shown."""

    amount: StoredAmount
    currency: str


@dataclass(kw_only=True)
class AccountCommitment:
    """What sales promised the customer, as the desk tracks its delivery."""

    commitment_id: str
    description: str
    due_date: datetime | None = None
    status: CommitmentStatus = CommitmentStatus.OPEN
    flag_id: str | None = None
    flag_reason: str | None = None
    flagged_by: str | None = None
    flagged_at: datetime | None = None
    delivered_by: str | None = None
    delivered_at: datetime | None = None
    # Sales' answer to the flag after the win (commitment_flag.updated_by_sales).
    sales_answer: str | None = None  # acknowledged | resolved
    sales_answered_by: str | None = None
    sales_acknowledged_at: datetime | None = None
    sales_resolved_at: datetime | None = None
    sales_resolution: str | None = None


@dataclass(kw_only=True)
class ChecklistItem:
    key: str
    title: str
    completed_at: datetime | None = None
    completed_by: str | None = None

    @property
    def done(self) -> bool:
        return self.completed_at is not None


@dataclass(kw_only=True)
class Onboarding:
    status: OnboardingStatus = OnboardingStatus.IN_PROGRESS
    started_at: datetime
    completed_at: datetime | None = None
    checklist: list[ChecklistItem]

    @property
    def duration_seconds(self) -> float | None:
        if self.completed_at is None:
            return None
        return max(0.0, (self.completed_at - self.started_at).total_seconds())


@dataclass(kw_only=True)
class Signal:
    """An upsell or renewal chance handed to sales."""

    signal_id: str
    kind: SignalKind
    description: str
    estimated_value: StoredAmount | None = None
    spotted_by: str
    spotted_at: datetime


@dataclass(kw_only=True)
class Account:
    account_id: str
    deal_id: str
    lead_id: str | None = None
    name: str
    contacts: list[AccountContact] = field(default_factory=list)
    products: list[AccountProduct] = field(default_factory=list)
    value: AccountValue
    sales_owner: str
    won_at: datetime
    csm: str | None = None
    commitments: list[AccountCommitment] = field(default_factory=list)
    onboarding: Onboarding
    signals: list[Signal] = field(default_factory=list)
    created_at: datetime
    journey_id: str | None = None  # correlation id of the customer's journey (from the won deal)
    term: Term | None = None
    tier: str = "standard"
    account_manager: str | None = None
    assignments: list[Assignment] = field(default_factory=list)
    tier_changes: list[TierChange] = field(default_factory=list)
    status: AccountStatus = AccountStatus.ACTIVE
    churned_at: datetime | None = None
    last_checkin_at: datetime | None = None
    last_checkin_sentiment: Sentiment | None = None
    usage: Usage | None = None
    health: HealthState | None = None

    def record_usage(self, usage: Usage) -> None:
        """The latest usage report wins; an older one arriving late changes nothing."""
        if self.usage is None or usage.as_of >= self.usage.as_of:
            self.usage = usage

    # --- ownership and tiers ----------------------------------------------------------------

    @property
    def owner(self) -> str | None:
        """Who answers for the account's renewal and risk: the account manager, else the CSM."""
        return self.account_manager or self.csm

    def needs_account_manager(self, config: SuccessConfig) -> bool:
        tier = config.tier(self.tier)
        return bool(tier and tier.named_account_manager and self.account_manager is None)

    def reassign(
        self, role: AssignmentRole, to_user: str | None, *, by: str, now: datetime, reason: str | None = None
    ) -> Assignment:
        """Hand the account (as CSM or as account manager) to ``to_user``; the change is recorded."""
        before = self.csm if role == AssignmentRole.CSM else self.account_manager
        if before == to_user:
            raise Conflict(
                f"{to_user} already is the account's {role.value}", field="user_id", role=role.value
            )
        if role == AssignmentRole.CSM:
            self.csm = to_user
        else:
            self.account_manager = to_user
        change = Assignment(role=role, from_user=before, to_user=to_user, by=by, at=now, reason=reason)
        self.assignments.append(change)
        return change

    def assign(
        self,
        role: AssignmentRole,
        to_user: str | None,
        *,
        active: Sequence[str],
        by: str,
        now: datetime,
        reason: str | None = None,
    ) -> bool:
        """Hand the account (as CSM or account manager) to an active CSM of the roster, or (account
        manager only) to nobody; the same user again changes (and records) nothing: False then."""
        if to_user is not None and to_user not in active:
            raise RuleViolation(
                f"user {to_user!r} is not an active CSM on the roster (PUT /csms)", field="user_id"
            )
        before = self.csm if role == AssignmentRole.CSM else self.account_manager
        if before == to_user:
            return False
        self.reassign(role, to_user, by=by, now=now, reason=reason)
        return True

    def change_tier(self, tier: TierConfig, *, by: str, now: datetime) -> TierChange:
        if tier.name == self.tier:
            raise Conflict(f"the account already is {tier.name}", field="tier", tier=tier.name)
        change = TierChange(from_tier=self.tier, to_tier=tier.name, by=by, at=now)
        self.tier = tier.name
        self.tier_changes.append(change)
        return change

    # --- onboarding -------------------------------------------------------------------------

    def onboarding_started(self) -> OnboardingStartedV1:
        return OnboardingStartedV1(
            account_id=self.account_id,
            deal_id=self.deal_id,
            account_name=self.name,
            csm=self.csm or UNASSIGNED,
            checklist=[i.title for i in self.onboarding.checklist],
        )

    def complete_item(self, key: str, *, by: str, now: datetime) -> OnboardingCompletedV1 | None:
        """Tick one checklist item; returns ``account.onboarding_completed`` when that completes
        the onboarding (None while items are left)."""
        item = next((i for i in self.onboarding.checklist if i.key == key), None)
        if item is None:
            known = [i.key for i in self.onboarding.checklist]
            raise NotFound(
                f"account {self.account_id} has no checklist item {key!r}; items: {known}",
                item=key,
                items=known,
            )
        if item.completed_at is not None:
            raise Conflict(
                f"checklist item {key!r} was already completed by {item.completed_by}",
                item=key,
                completed_at=item.completed_at.isoformat(),
            )
        item.completed_at = now
        item.completed_by = by
        if all(i.done for i in self.onboarding.checklist):
            self.onboarding.status = OnboardingStatus.COMPLETED
            self.onboarding.completed_at = now
            return OnboardingCompletedV1(
                account_id=self.account_id,
                deal_id=self.deal_id,
                csm=self.csm,
                started_at=self.onboarding.started_at,
                completed_at=now,
                duration_seconds=self.onboarding.duration_seconds or 0.0,
            )
        return None

    def step_completed(self, key: str, *, by: str, now: datetime) -> OnboardingStepCompletedV1:
        """One ticked checklist item (after ``complete_item``): analytics pairs the first with the
        deal's win, customer success' first human step (business latency of deal-won)."""
        return OnboardingStepCompletedV1(
            account_id=self.account_id,
            deal_id=self.deal_id,
            item=key,
            completed_by=by,
            completed_at=now,
            remaining=sum(1 for i in self.onboarding.checklist if not i.done),
        )

    # --- commitments ------------------------------------------------------------------------

    def commitment(self, commitment_id: str) -> AccountCommitment:
        for c in self.commitments:
            if c.commitment_id == commitment_id:
                return c
        raise NotFound(
            f"account {self.account_id} has no commitment {commitment_id!r}", commitment_id=commitment_id
        )

    def flag_commitment(
        self, commitment_id: str, *, flag_id: str, reason: str, by: str, now: datetime
    ) -> AccountCommitment:
        """Customer success says sales promised more than can be delivered."""
        reason = reason.strip()
        if not reason:
            raise RuleViolation("a flag needs a reason", field="reason")
        c = self.commitment(commitment_id)
        if c.status != CommitmentStatus.OPEN:
            raise Conflict(
                f"commitment {commitment_id!r} is already {c.status.value}",
                commitment_id=commitment_id,
                status=c.status.value,
            )
        c.status = CommitmentStatus.FLAGGED
        c.flag_id, c.flag_reason, c.flagged_by, c.flagged_at = flag_id, reason, by, now
        return c

    def commitment_flagged(self, commitment: AccountCommitment) -> CommitmentFlaggedV1:
        """The flag as handed to sales (``commitment.flagged``)."""
        assert commitment.flag_id is not None
        assert commitment.flag_reason is not None
        assert commitment.flagged_by is not None
        return CommitmentFlaggedV1(
            flag_id=commitment.flag_id,
            account_id=self.account_id,
            deal_id=self.deal_id,
            commitment_id=commitment.commitment_id,
            reason=commitment.flag_reason,
            flagged_by=commitment.flagged_by,
        )

    def record_flag_answer(self, answer: CommitmentFlagUpdatedBySalesV1) -> bool:
        """Sales acknowledged or resolved a flag on one of this account's commitments; returns
        False when it changes nothing (an older copy after a newer answer, or another flag)."""
        c = self.commitment(answer.commitment_id)
        if c.flag_id is not None and c.flag_id != answer.flag_id:
            return False
        resolved = answer.status == CommitmentFlagStatus.RESOLVED
        if c.sales_answer == CommitmentFlagStatus.RESOLVED.value and not resolved:
            return False  # a re-sent acknowledgement arriving after the resolution
        c.sales_answer = answer.status.value
        c.sales_answered_by = answer.acted_by
        if resolved:
            c.sales_resolved_at, c.sales_resolution = answer.acted_at, answer.resolution
        elif c.sales_acknowledged_at is None:
            c.sales_acknowledged_at = answer.acted_at
        return True

    def deliver_commitment(self, commitment_id: str, *, by: str, now: datetime) -> AccountCommitment:
        """The promise was kept (a flagged one too, once sales and the desk sorted it out)."""
        c = self.commitment(commitment_id)
        if c.status == CommitmentStatus.DELIVERED:
            raise Conflict(
                f"commitment {commitment_id!r} is already delivered",
                commitment_id=commitment_id,
                status=c.status.value,
            )
        c.status = CommitmentStatus.DELIVERED
        c.delivered_by, c.delivered_at = by, now
        return c

    # --- signals ----------------------------------------------------------------------------

    def spot_signal(
        self,
        *,
        signal_id: str,
        kind: SignalKind,
        description: str,
        estimated_value: Decimal | None,
        by: str,
        now: datetime,
    ) -> Signal:
        description = description.strip()
        if not description:
            raise RuleViolation("a signal needs a description", field="description")
        if estimated_value is not None and estimated_value < 0:
            raise RuleViolation("estimated_value must not be negative", field="estimated_value")
        signal = Signal(
            signal_id=signal_id,
            kind=kind,
            description=description,
            estimated_value=estimated_value,
            spotted_by=by,
            spotted_at=now,
        )
        self.signals.append(signal)
        return signal

    def upsell_spotted(self, signal: Signal) -> UpsellSpottedV1:
        """The chance as handed to sales (``upsell.spotted``)."""
        return UpsellSpottedV1(
            signal_id=signal.signal_id,
            account_id=self.account_id,
            deal_id=self.deal_id,
            account_name=self.name,
            sales_owner=self.sales_owner,
            kind=signal.kind,
            description=signal.description,
            estimated_value=to_wire(signal.estimated_value),
            spotted_by=signal.spotted_by,
        )


def new_checklist(titles: Sequence[str]) -> list[ChecklistItem]:
    return [ChecklistItem(key=slugify(t), title=t) for t in titles]


def account_from_deal(
    deal: DealWonV1,
    *,
    account_id: str,
    csm: str | None,
    checklist: Sequence[str],
    now: datetime,
    journey_id: str | None = None,
    success: SuccessConfig | None = None,
) -> Account:
    """The account customer success opens for a won deal, keeping everything sales handed over."""
    success = success or SuccessConfig()
    term = term_of(deal, success)
    return Account(
        account_id=account_id,
        deal_id=deal.deal_id,
        lead_id=deal.lead_id,
        name=deal.account_name,
        contacts=[
            AccountContact(name=c.name, email=str(c.email), phone=c.phone, role=c.role) for c in deal.contacts
        ],
        products=[
            AccountProduct(sku=p.sku, name=p.name, quantity=p.quantity, unit_price=to_amount(p.unit_price))
            for p in deal.products
        ],
        value=AccountValue(amount=to_amount(deal.value.amount), currency=deal.value.currency),
        sales_owner=deal.sales_owner,
        won_at=deal.won_at,
        csm=csm,
        commitments=[
            AccountCommitment(commitment_id=c.commitment_id, description=c.description, due_date=c.due_date)
            for c in deal.commitments
        ],
        onboarding=Onboarding(started_at=now, checklist=new_checklist(checklist)),
        created_at=now,
        journey_id=journey_id,
        term=term,
        tier=success.tier_for_value(term.amount).name,
    )


def term_of(deal: DealWonV1, success: SuccessConfig) -> Term:
    """The contract term comes from the deal (``deal.won`` v2); a deal without one (v1) gets the
    configured default length from the day it was won, marked ``source="default"``."""
    if isinstance(deal, DealWonV2) and deal.term is not None:
        return Term.from_contract(deal.term, source="deal")
    return Term.of(
        start=deal.won_at,
        months=success.default_term_months,
        amount=to_amount(deal.value.amount),
        currency=deal.value.currency,
        source="default",
    )
