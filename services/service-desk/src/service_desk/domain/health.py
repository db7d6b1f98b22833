"""The account health score: explainable, versioned rules (like marketing's lead scoring),
and the churn early warning built on it, with its hit rate against recorded outcomes.

Pure: the caller gathers the facts (``HealthFacts``) and passes the time.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from crm_contracts.events.service_desk import (
    ChurnRiskChangedV1,
    HealthBand,
    HealthReason,
    HealthScoredV1,
    RenewalOutcome,
    Sentiment,
)
from pydantic import BaseModel, ConfigDict, Field, model_validator


class HealthRules(BaseModel):
    """Points per component around a base score, clamped to 0-100. Saving new rules makes a
    new version; every score names the version it was computed with."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base: float = Field(default=60, ge=0, le=100)
    onboarding_completed: float = Field(default=10, ge=-100, le=100)
    onboarding_late: float = Field(default=-10, ge=-100, le=100, description="Still onboarding after")
    onboarding_late_days: int = Field(default=45, ge=1, le=365)
    window_days: int = Field(default=90, ge=7, le=365, description="Tickets and breaches counted over")
    ticket_volume_free: int = Field(default=3, ge=0, le=1000, description="Tickets in the window at no cost")
    per_extra_ticket: float = Field(default=-2, ge=-100, le=0)
    ticket_volume_cap: float = Field(default=-10, ge=-100, le=0)
    per_sla_breach: float = Field(default=-5, ge=-100, le=0)
    sla_breach_cap: float = Field(default=-20, ge=-100, le=0)
    per_csat_point: float = Field(default=5, ge=0, le=50, description="x (average CSAT - 3)")
    nps_promoter: float = Field(default=10, ge=-100, le=100)
    nps_detractor: float = Field(default=-15, ge=-100, le=100)
    nps_recent_days: int = Field(default=180, ge=7, le=730)
    checkin_on_time: float = Field(default=5, ge=-100, le=100)
    checkin_overdue: float = Field(default=-10, ge=-100, le=100)
    sentiment_positive: float = Field(default=5, ge=-100, le=100)
    sentiment_negative: float = Field(default=-10, ge=-100, le=100)
    per_open_flag: float = Field(default=-10, ge=-100, le=0, description="Per open over-promise flag")
    open_flag_cap: float = Field(default=-20, ge=-100, le=0)
    usage_high_ratio: float = Field(default=0.7, gt=0, le=1)
    usage_high: float = Field(default=10, ge=-100, le=100)
    usage_low_ratio: float = Field(default=0.3, ge=0, lt=1)
    usage_low: float = Field(default=-15, ge=-100, le=100)
    renewal_overdue: float = Field(default=-10, ge=-100, le=0)
    healthy_from: float = Field(default=70, ge=0, le=100)
    at_risk_below: float = Field(default=45, ge=0, le=100)
    # The churn early warning
    falling_drop: float = Field(
        default=15, gt=0, le=100, description="A fall of this much is a falling trend"
    )
    falling_window_days: int = Field(default=60, ge=1, le=365)
    repeated_breaches: int = Field(default=2, ge=1, le=100, description="SLA breaches in the window")
    renewal_at_risk_days: int = Field(
        default=60,
        ge=0,
        le=365,
        description="A renewal due within this many days on an account showing a risk (low or falling "
        "health, a detractor NPS, open over-promise flags, repeated SLA breaches) is at risk: "
        "'renewal_at_risk' in the churn warning and the renewal list, weeks before the date (0: off)",
    )

    @model_validator(mode="after")
    def _ordered(self) -> HealthRules:
        if self.at_risk_below > self.healthy_from:
            raise ValueError("at_risk_below must not exceed healthy_from")
        if self.usage_low_ratio >= self.usage_high_ratio:
            raise ValueError("usage_low_ratio must be below usage_high_ratio")
        return self


@dataclass(frozen=True, kw_only=True)
class RuleSet:
    """A saved version of the rules."""

    version: int
    rules: HealthRules
    created_at: datetime | None = None
    created_by: str | None = None


@dataclass(frozen=True)
class Reason:
    component: str
    points: float
    detail: str


@dataclass(frozen=True)
class HealthFacts:
    """What the score looks at, gathered by the handler from the desk's own records."""

    onboarding_completed: bool
    onboarding_started_at: datetime
    tickets_in_window: int = 0
    sla_breaches_in_window: int = 0
    csat_scores: Sequence[int] = ()
    latest_nps: tuple[int, datetime] | None = None
    checkin_due_at: datetime | None = None
    last_sentiment: Sentiment | None = None
    open_flags: int = 0
    usage_ratio: float | None = None
    renewal_overdue: bool = False
    renewal_due_at: datetime | None = None  # the active term's renewal date


@dataclass(frozen=True)
class Score:
    score: float
    band: HealthBand
    reasons: list[Reason]
    rules_version: int


def _capped(points: float, cap: float) -> float:
    return max(points, cap)


def _onboarding(f: HealthFacts, r: HealthRules, now: datetime) -> Reason | None:
    if f.onboarding_completed:
        return Reason("onboarding", r.onboarding_completed, "onboarding completed")
    days = (now - f.onboarding_started_at).days
    if days > r.onboarding_late_days:
        return Reason("onboarding", r.onboarding_late, f"still onboarding after {days} days")
    return None


def _tickets(f: HealthFacts, r: HealthRules) -> list[Reason]:
    out = []
    extra = f.tickets_in_window - r.ticket_volume_free
    if extra > 0:
        points = _capped(extra * r.per_extra_ticket, r.ticket_volume_cap)
        out.append(Reason("tickets", points, f"{f.tickets_in_window} tickets in {r.window_days} days"))
    if f.sla_breaches_in_window:
        points = _capped(f.sla_breaches_in_window * r.per_sla_breach, r.sla_breach_cap)
        out.append(Reason("sla", points, f"{f.sla_breaches_in_window} SLA breaches in {r.window_days} days"))
    return out


def _voice(f: HealthFacts, r: HealthRules, now: datetime) -> list[Reason]:
    out = []
    if f.csat_scores:
        average = sum(f.csat_scores) / len(f.csat_scores)
        points = round((average - 3) * r.per_csat_point, 2)
        if points:
            out.append(
                Reason("csat", points, f"average CSAT {average:.1f} over {len(f.csat_scores)} ratings")
            )
    if f.latest_nps is not None and now - f.latest_nps[1] <= timedelta(days=r.nps_recent_days):
        nps = f.latest_nps[0]
        if nps >= 9:
            out.append(Reason("nps", r.nps_promoter, f"NPS {nps}: promoter"))
        elif nps <= 6:
            out.append(Reason("nps", r.nps_detractor, f"NPS {nps}: detractor"))
    return out


def _checkins(f: HealthFacts, r: HealthRules, now: datetime) -> list[Reason]:
    out = []
    if f.checkin_due_at is not None:
        if f.checkin_due_at < now:
            days = (now - f.checkin_due_at).days
            out.append(Reason("checkins", r.checkin_overdue, f"check-in overdue by {days} days"))
        else:
            out.append(Reason("checkins", r.checkin_on_time, "check-ins on cadence"))
    if f.last_sentiment == Sentiment.POSITIVE:
        out.append(Reason("sentiment", r.sentiment_positive, "last check-in positive"))
    elif f.last_sentiment == Sentiment.NEGATIVE:
        out.append(Reason("sentiment", r.sentiment_negative, "last check-in negative"))
    return out


def _others(f: HealthFacts, r: HealthRules) -> list[Reason]:
    out = []
    if f.open_flags:
        points = _capped(f.open_flags * r.per_open_flag, r.open_flag_cap)
        out.append(Reason("promises", points, f"{f.open_flags} open over-promise flags"))
    if f.usage_ratio is not None:
        if f.usage_ratio >= r.usage_high_ratio:
            out.append(Reason("usage", r.usage_high, f"{f.usage_ratio:.0%} of licences in use"))
        elif f.usage_ratio < r.usage_low_ratio:
            out.append(Reason("usage", r.usage_low, f"only {f.usage_ratio:.0%} of licences in use"))
    if f.renewal_overdue:
        out.append(Reason("renewal", r.renewal_overdue, "renewal date passed without an outcome"))
    return out


def score(facts: HealthFacts, rules: RuleSet, now: datetime) -> Score:
    """The score (0-100) with every component that moved it."""
    r = rules.rules
    reasons = [
        *filter(None, [_onboarding(facts, r, now)]),
        *_tickets(facts, r),
        *_voice(facts, r, now),
        *_checkins(facts, r, now),
        *_others(facts, r),
    ]
    value = round(min(100.0, max(0.0, r.base + sum(x.points for x in reasons))), 1)
    band = HealthBand.HEALTHY if value >= r.healthy_from else HealthBand.WATCH
    if value < r.at_risk_below:
        band = HealthBand.AT_RISK
    return Score(value, band, reasons, rules.version)


# --- churn early warning ------------------------------------------------------------------------


FALLING_TREND = "falling_trend"
DETRACTOR_NPS = "detractor_nps"
REPEATED_SLA_BREACHES = "repeated_sla_breaches"
OVERDUE_RENEWAL = "overdue_renewal"
RENEWAL_AT_RISK = "renewal_at_risk"
# What puts an upcoming renewal at risk (besides the signals above that hold)
LOW_HEALTH = "low_health"
OPEN_FLAGS = "open_flags"
RENEWAL_RISKS: tuple[str, ...] = (LOW_HEALTH, FALLING_TREND, DETRACTOR_NPS, OPEN_FLAGS, REPEATED_SLA_BREACHES)


@dataclass(frozen=True)
class Warning:
    code: str
    detail: str


def renewal_in_window(due_at: datetime | None, rules: HealthRules, now: datetime) -> bool:
    """The renewal falls due within ``renewal_at_risk_days`` (not yet overdue: that is its own signal)."""
    return due_at is not None and now <= due_at <= now + timedelta(days=rules.renewal_at_risk_days)


def renewal_risks(*, low_health: bool, signals: Collection[str], open_flags: int) -> list[str]:
    """What makes an upcoming renewal at risk, in a fixed order (:data:`RENEWAL_RISKS`)."""
    held = {LOW_HEALTH} if low_health else set()
    held |= set(signals) & {FALLING_TREND, DETRACTOR_NPS, REPEATED_SLA_BREACHES}
    if open_flags:
        held.add(OPEN_FLAGS)
    return [r for r in RENEWAL_RISKS if r in held]


def churn_signals(
    current: float,
    history: Iterable[tuple[datetime, float]],
    facts: HealthFacts,
    rules: HealthRules,
    now: datetime,
) -> list[Warning]:
    """The warning signals that hold now; any one raises the at-risk alert."""
    out = []
    since = now - timedelta(days=rules.falling_window_days)
    recent = [s for at, s in history if at >= since]
    if recent and max(recent) - current >= rules.falling_drop:
        out.append(Warning(FALLING_TREND, f"health fell from {max(recent):g} to {current:g}"))
    nps = facts.latest_nps
    if nps is not None and nps[0] <= 6 and now - nps[1] <= timedelta(days=rules.nps_recent_days):
        out.append(Warning(DETRACTOR_NPS, f"NPS {nps[0]}"))
    if facts.sla_breaches_in_window >= rules.repeated_breaches:
        out.append(
            Warning(
                REPEATED_SLA_BREACHES,
                f"{facts.sla_breaches_in_window} SLA breaches in {rules.window_days} days",
            )
        )
    if facts.renewal_overdue:
        out.append(Warning(OVERDUE_RENEWAL, "renewal date passed without an outcome"))
    if renewal_in_window(facts.renewal_due_at, rules, now) and facts.renewal_due_at is not None:
        risks = renewal_risks(
            low_health=current < rules.at_risk_below,
            signals=[w.code for w in out],
            open_flags=facts.open_flags,
        )
        if risks:
            days = (facts.renewal_due_at - now).days
            out.append(Warning(RENEWAL_AT_RISK, f"renewal due in {days} days with {', '.join(risks)}"))
    return out


@dataclass(frozen=True)
class Outcome:
    account_id: str
    churned: bool
    due_date: datetime
    recorded_at: datetime


@dataclass
class HitRate:
    """How well the warning predicted churn: a renewal is *predicted* to churn when the alert was
    raised for its account in the ``lookback_days`` before its due date, up to its recording."""

    lookback_days: int
    evaluated: int = 0
    true_positives: int = 0
    false_positives: int = 0
    false_negatives: int = 0
    true_negatives: int = 0
    misses: list[str] = field(default_factory=list)

    @property
    def precision(self) -> float | None:
        predicted = self.true_positives + self.false_positives
        return round(self.true_positives / predicted, 4) if predicted else None

    @property
    def recall(self) -> float | None:
        churned = self.true_positives + self.false_negatives
        return round(self.true_positives / churned, 4) if churned else None


def hit_rate(
    outcomes: Iterable[Outcome], raised: Iterable[tuple[str, datetime]], *, lookback_days: int
) -> HitRate:
    """Precision and recall of the churn warning against recorded renewal outcomes."""
    alerts: dict[str, list[datetime]] = {}
    for account_id, at in raised:
        alerts.setdefault(account_id, []).append(at)
    result = HitRate(lookback_days)
    for o in outcomes:
        start = o.due_date - timedelta(days=lookback_days)
        warned = any(start <= at <= o.recorded_at for at in alerts.get(o.account_id, ()))
        result.evaluated += 1
        if warned and o.churned:
            result.true_positives += 1
        elif warned:
            result.false_positives += 1
        elif o.churned:
            result.false_negatives += 1
            result.misses.append(o.account_id)
        else:
            result.true_negatives += 1
    return result


def outcome_of(
    account_id: str, outcome: RenewalOutcome, due_date: datetime, recorded_at: datetime
) -> Outcome:
    return Outcome(account_id, outcome == RenewalOutcome.CHURNED, due_date, recorded_at)


# --- what is stored -----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class StoredReason:
    component: str
    points: float
    detail: str


@dataclass(frozen=True, kw_only=True)
class HealthRecord:
    """One score in an account's health history."""

    record_id: str
    account_id: str
    score: float
    band: HealthBand
    rules_version: int
    reasons: list[StoredReason]
    scored_at: datetime

    def scored(self) -> HealthScoredV1:
        """``account.health_scored``."""
        return HealthScoredV1(
            account_id=self.account_id,
            score=self.score,
            band=self.band,
            rules_version=self.rules_version,
            reasons=[
                HealthReason(component=r.component, points=r.points, detail=r.detail) for r in self.reasons
            ],
            scored_at=self.scored_at,
        )


@dataclass(frozen=True, kw_only=True)
class RiskChange:
    """The churn warning raised, changed or cleared for an account."""

    account_id: str
    at_risk: bool
    signals: list[str]
    details: list[str]
    account_manager: str | None
    health_score: float
    at: datetime

    def changed(self) -> ChurnRiskChangedV1:
        """``account.churn_risk_changed``: the warning raised, changed or cleared."""
        return ChurnRiskChangedV1(
            account_id=self.account_id,
            at_risk=self.at_risk,
            signals=self.signals,
            account_manager=self.account_manager,
            health_score=self.health_score,
        )


@dataclass(frozen=True, kw_only=True)
class HealthState:
    """The account's latest score and warning, kept on the account."""

    score: float
    band: HealthBand
    rules_version: int
    reasons: list[StoredReason]
    scored_at: datetime
    at_risk: bool = False
    signals: list[str] = field(default_factory=list)
    signal_details: list[str] = field(default_factory=list)
    at_risk_since: datetime | None = None


def _score_changed(previous: HealthState | None, state: HealthState) -> bool:
    """A new history record is kept only when the score, band, rules or reasons moved."""
    if previous is None:
        return True
    before = (previous.score, previous.band, previous.rules_version, previous.reasons)
    return before != (state.score, state.band, state.rules_version, state.reasons)


def next_state(
    previous: HealthState | None,
    result: Score,
    warnings: Sequence[Warning],
    *,
    account_id: str,
    record_id: str,
    account_manager: str | None,
    now: datetime,
) -> tuple[HealthState, HealthRecord | None, RiskChange | None]:
    """The account's new state, the history record if the score changed, the warning change."""
    reasons = [StoredReason(component=r.component, points=r.points, detail=r.detail) for r in result.reasons]
    codes = [w.code for w in warnings]
    at_risk, was_at_risk = bool(codes), (previous.at_risk if previous else False)
    state = HealthState(
        score=result.score,
        band=result.band,
        rules_version=result.rules_version,
        reasons=reasons,
        scored_at=now,
        at_risk=at_risk,
        signals=codes,
        signal_details=[w.detail for w in warnings],
        at_risk_since=(previous.at_risk_since if previous and was_at_risk else now) if at_risk else None,
    )
    record = (
        HealthRecord(
            record_id=record_id,
            account_id=account_id,
            score=state.score,
            band=state.band,
            rules_version=state.rules_version,
            reasons=reasons,
            scored_at=now,
        )
        if _score_changed(previous, state)
        else None
    )
    risk = None
    if at_risk != was_at_risk or (at_risk and previous is not None and previous.signals != codes):
        risk = RiskChange(
            account_id=account_id,
            at_risk=at_risk,
            signals=codes,
            details=state.signal_details,
            account_manager=account_manager,
            health_score=state.score,
            at=now,
        )
    return state, record, risk
