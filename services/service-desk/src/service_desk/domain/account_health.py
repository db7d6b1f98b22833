"""An account's health, assessed from its own records: the facts the score looks at, the score,
the churn warning, and the account's new health state. Pure: the records, ids and time come in."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from service_desk.domain import checkins, health
from service_desk.domain.accounts import Account, AccountStatus, CommitmentStatus, OnboardingStatus
from service_desk.domain.health import HealthFacts, HealthRecord, HealthRules, RiskChange, RuleSet
from service_desk.domain.renewals import renewal_overdue
from service_desk.domain.success_config import TierConfig
from service_desk.domain.tickets import Ticket


def facts_of(
    account: Account,
    *,
    tier: TierConfig | None,
    tickets: Sequence[Ticket],
    latest_nps: tuple[int, datetime] | None,
    rules: HealthRules,
    now: datetime,
) -> HealthFacts:
    """What the score looks at: onboarding, tickets (newest first) and their breaches in the
    window, CSAT and NPS, check-ins, flagged commitments, usage, an overdue renewal."""
    recent = [t for t in tickets if t.opened_at >= now - timedelta(days=rules.window_days)]
    return HealthFacts(
        onboarding_completed=account.onboarding.status == OnboardingStatus.COMPLETED,
        onboarding_started_at=account.onboarding.started_at,
        tickets_in_window=len(recent),
        sla_breaches_in_window=sum(
            bool(t.first_response_breached) + bool(t.resolution_breached) for t in recent
        ),
        csat_scores=[t.csat for t in tickets if t.csat is not None][:5],
        latest_nps=latest_nps,
        checkin_due_at=checkins.checkin_due_at(account, tier),
        last_sentiment=account.last_checkin_sentiment,
        open_flags=sum(c.status == CommitmentStatus.FLAGGED for c in account.commitments),
        usage_ratio=account.usage.ratio if account.usage else None,
        renewal_overdue=renewal_overdue(account, now),
        renewal_due_at=account.term.renewal_date
        if account.term is not None and account.status == AccountStatus.ACTIVE
        else None,
    )


def falling_since(rules: HealthRules, now: datetime) -> datetime:
    """How far back the score history is looked at for a falling score."""
    return now - timedelta(days=rules.falling_window_days)


def assess(
    account: Account,
    facts: HealthFacts,
    ruleset: RuleSet,
    history: Sequence[HealthRecord],
    *,
    record_id: str,
    now: datetime,
) -> tuple[HealthRecord | None, RiskChange | None]:
    """Score the account and update its churn warning (``account.health`` changes).

    Returns the score to add to the history (None when it did not change) and the warning's
    raise, change or clear (None when nothing happened)."""
    result = health.score(facts, ruleset, now)
    scores = [(h.scored_at, h.score) for h in history]
    warnings = health.churn_signals(result.score, scores, facts, ruleset.rules, now)
    state, record, risk = health.next_state(
        account.health,
        result,
        warnings,
        account_id=account.account_id,
        record_id=record_id,
        account_manager=account.owner,
        now=now,
    )
    account.health = state
    return record, risk
