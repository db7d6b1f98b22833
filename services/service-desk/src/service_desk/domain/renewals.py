"""Renewals: each account's renewal date, the renewal list, and the recorded outcome.

Pure: the caller passes the account, identifiers and the current time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from crm_contracts.events.common import Money
from crm_contracts.events.service_desk import ChurnReason, RenewalOutcome, RenewalRecordedV1
from crm_platform.errors import Conflict, RuleViolation
from crm_platform.money import StoredAmount, to_wire

from service_desk.domain import health
from service_desk.domain.accounts import Account, AccountStatus, CommitmentStatus
from service_desk.domain.terms import Term


@dataclass(frozen=True, kw_only=True)
class RenewalRecord:
    """One renewal decision, kept forever (the churn warning's hit rate is measured against it)."""

    renewal_id: str
    account_id: str
    deal_id: str
    tier: str
    account_manager: str | None
    outcome: RenewalOutcome
    due_date: datetime
    previous_amount: StoredAmount
    currency: str
    new_term: Term | None = None
    churn_reason: ChurnReason | None = None
    notes: str | None = None
    recorded_by: str
    recorded_at: datetime

    def recorded(self) -> RenewalRecordedV1:
        """``account.renewal_recorded``."""
        return RenewalRecordedV1(
            renewal_id=self.renewal_id,
            account_id=self.account_id,
            deal_id=self.deal_id,
            tier=self.tier,
            account_manager=self.account_manager,
            outcome=self.outcome,
            due_date=self.due_date,
            previous_value=Money(amount=to_wire(self.previous_amount) or 0.0, currency=self.currency),
            new_term=self.new_term.to_contract() if self.new_term else None,
            churn_reason=self.churn_reason,
            recorded_by=self.recorded_by,
        )


@dataclass(frozen=True)
class RenewalDecision:
    """What the account manager decided; ``new_*`` for renewed/downgraded, ``churn_reason`` for churned."""

    outcome: RenewalOutcome
    new_amount: Decimal | None = None
    new_months: int | None = None
    new_start: datetime | None = None
    churn_reason: ChurnReason | None = None
    notes: str | None = None


def record_renewal(
    account: Account, decision: RenewalDecision, *, renewal_id: str, by: str, now: datetime
) -> RenewalRecord:
    """Apply the outcome to the account (a new term, or churned) and return the record."""
    if account.status != AccountStatus.ACTIVE or account.term is None:
        raise Conflict(
            f"account {account.account_id} is {account.status.value}; there is no renewal to record",
            account_id=account.account_id,
            status=account.status.value,
        )
    term = account.term
    new_term = _new_term(term, decision) if decision.outcome != RenewalOutcome.CHURNED else None
    if decision.outcome == RenewalOutcome.CHURNED:
        if decision.churn_reason is None:
            raise RuleViolation("a churned renewal needs a churn_reason", field="churn_reason")
        if decision.new_amount is not None or decision.new_months is not None:
            raise RuleViolation("a churned renewal has no new term", field="new_value")
        account.status, account.churned_at = AccountStatus.CHURNED, now
    else:
        if decision.churn_reason is not None:
            raise RuleViolation(
                f"churn_reason only goes with outcome 'churned', not {decision.outcome.value!r}",
                field="churn_reason",
            )
        account.term = new_term
    return RenewalRecord(
        renewal_id=renewal_id,
        account_id=account.account_id,
        deal_id=account.deal_id,
        tier=account.tier,
        account_manager=account.owner,
        outcome=decision.outcome,
        due_date=term.renewal_date,
        previous_amount=term.amount,
        currency=term.currency,
        new_term=new_term,
        churn_reason=decision.churn_reason,
        notes=decision.notes,
        recorded_by=by,
        recorded_at=now,
    )


def _new_term(term: Term, decision: RenewalDecision) -> Term:
    if decision.new_amount is None:
        raise RuleViolation(f"a {decision.outcome.value} renewal needs new_value", field="new_value")
    if decision.new_months is None:
        raise RuleViolation(
            f"a {decision.outcome.value} renewal needs new_term_months", field="new_term_months"
        )
    if decision.outcome == RenewalOutcome.DOWNGRADED and decision.new_amount >= term.amount:
        raise RuleViolation(
            f"a downgrade's new_value must be below the current {term.amount} {term.currency}",
            field="new_value",
        )
    if decision.outcome == RenewalOutcome.RENEWED and decision.new_amount < term.amount:
        raise RuleViolation(
            f"new_value is below the current {term.amount} {term.currency}: record it as 'downgraded'",
            field="new_value",
        )
    return Term.of(
        start=decision.new_start or term.renewal_date,
        months=decision.new_months,
        amount=decision.new_amount,
        currency=term.currency,
        source="renewal",
    )


@dataclass(frozen=True)
class RenewalDue:
    """One line of the renewal list; ``risks`` (codes of :data:`health.RENEWAL_RISKS`) when it is
    due within the health rules' ``renewal_at_risk_days`` on an account showing a risk."""

    account: Account
    due_date: datetime
    days_left: int
    overdue: bool
    risks: tuple[str, ...] = ()

    @property
    def at_risk(self) -> bool:
        return bool(self.risks)


def renewal_overdue(account: Account, now: datetime) -> bool:
    """The renewal date has passed and no outcome was recorded (a recorded one moves the date)."""
    return (
        account.status == AccountStatus.ACTIVE
        and account.term is not None
        and account.term.renewal_date < now
    )


def renewal_risks(account: Account, rules: health.HealthRules, now: datetime) -> tuple[str, ...]:
    """Why the account's upcoming renewal is at risk (empty: it is not, or not due soon), from the
    account's latest health (its band and warning signals) and its open over-promise flags now."""
    if account.term is None or not health.renewal_in_window(account.term.renewal_date, rules, now):
        return ()
    state = account.health
    risks = health.renewal_risks(
        low_health=state is not None and state.score < rules.at_risk_below,
        signals=state.signals if state is not None else (),
        open_flags=sum(c.status == CommitmentStatus.FLAGGED for c in account.commitments),
    )
    return tuple(risks)


def renewal_list(
    accounts: list[Account], *, now: datetime, window_days: int, rules: health.HealthRules | None = None
) -> list[RenewalDue]:
    """Active accounts renewing within the window (overdue ones first), soonest first; with
    ``rules``, each marked at risk with its reasons (:func:`renewal_risks`)."""
    until = now + timedelta(days=window_days)
    due = [
        RenewalDue(
            account=a,
            due_date=a.term.renewal_date,
            days_left=(a.term.renewal_date - now).days,
            overdue=a.term.renewal_date < now,
            risks=renewal_risks(a, rules, now) if rules is not None else (),
        )
        for a in accounts
        if a.status == AccountStatus.ACTIVE and a.term is not None and a.term.renewal_date <= until
    ]
    return sorted(due, key=lambda d: d.due_date)
