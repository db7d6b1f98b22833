"""The demo's history, planned: what happens to each account over about two years (pure).

``plan_history(seed, accounts, now)`` draws, with one seeded RNG, a life for each account:
won between about 23 months and 2 weeks before ``now``, onboarded, its tickets (priority,
first response and resolution times, some past their SLA), CSAT answers, check-ins on its
tier's cadence (some skipped), NPS answers, usage every two months, voice-of-the-customer action items
for the three departments and what they did with them, an over-promise flag that sales
answers, and each renewal's outcome. :mod:`crm_platform.devinfra.demo_history` plays it
through the gateway, each step at its own time (the demo clock).

**Churn is not the warning rule.** Each account has a hidden risk (0-1). The risk moves the
signals the health score and the churn warning read (tickets and SLA breaches, CSAT, NPS,
check-in sentiment and skips, usage), each with its own noise, and the churn odds at a
renewal; besides, some churn comes from outside (`business_closed`, `budget_cut`) whatever the
signals, and some risky accounts renew. So the warning is neither always right nor always
wrong, and its precision and recall are measured on the history, not built into it.
Renewals are recorded late as often for churners as for renewers, so ``overdue_renewal``
carries no hidden hint.

Same seed, accounts and ``now``: the same plan (``plan_history`` is deterministic).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

Department = Literal["sales", "marketing", "customer-success"]

HISTORY_DAYS = 670  # the oldest win; its capture (45 days before) stays within DEMO_TIME_MAX_AGE (730)
NEWEST_WIN_DAYS = 14
CHANNELS = ("webinar", "web_form", "partner_api", "trade_show", "referral")
CAMPAIGNS = ("autumn-webinar", "trial-q4", "partner-referrals", "expo-2026", "none")
PRIORITIES = (("low", 0.2), ("normal", 0.5), ("high", 0.22), ("urgent", 0.08))
# The desk's default SLA (hours): first response, resolution.
SLA_HOURS = {"urgent": (1, 8), "high": (4, 24), "normal": (8, 72), "low": (24, 120)}
CHECKIN_EVERY = {"standard": 180, "growth": 90, "strategic": 30}  # the desk's default tiers
NPS_EVERY_DAYS = 185  # just past the desk's default schedule (180)
USAGE_EVERY_DAYS = 60
RISK_CHURN_REASONS = ("price", "competitor", "low_adoption", "service_quality", "product_fit")
OUTSIDE_CHURN_REASONS = ("business_closed", "budget_cut")


@dataclass(frozen=True)
class Ticket:
    opened_at: datetime
    priority: str
    first_response_at: datetime
    resolved_at: datetime
    csat: int | None  # the customer's answer to the survey link, if they answer
    answered_at: datetime | None


@dataclass(frozen=True)
class CheckIn:
    held_at: datetime
    sentiment: str


@dataclass(frozen=True)
class Nps:
    sent_at: datetime
    score: int | None  # None: never answered
    answered_at: datetime | None


@dataclass(frozen=True)
class Item:
    """An action item raised from a source and what the owning department did with it."""

    raised_at: datetime
    department: Department
    source: str  # ticket | survey | check_in
    due_at: datetime
    accepted_at: datetime | None
    closed_at: datetime | None
    outcome: Literal["done", "declined", "open"]


@dataclass(frozen=True)
class Renewal:
    due_at: datetime
    recorded_at: datetime | None  # None: due, not recorded yet (an overdue renewal now)
    outcome: Literal["renewed", "downgraded", "churned"]
    new_value: int
    churn_reason: str | None


@dataclass(frozen=True)
class Flag:
    flagged_at: datetime
    acknowledged_at: datetime
    resolved_at: datetime | None


@dataclass
class AccountPlan:
    index: int
    name: str
    channel: str
    campaign: str
    risk: float
    value: int
    commitments: int
    captured_at: datetime
    won_at: datetime
    onboarding: list[datetime] = field(default_factory=list)  # each checklist item, in order
    tickets: list[Ticket] = field(default_factory=list)
    checkins: list[CheckIn] = field(default_factory=list)
    nps: list[Nps] = field(default_factory=list)
    usage: list[tuple[datetime, float]] = field(default_factory=list)
    items: list[Item] = field(default_factory=list)
    renewals: list[Renewal] = field(default_factory=list)
    flag: Flag | None = None

    @property
    def tier(self) -> str:
        return "strategic" if self.value >= 250_000 else "growth" if self.value >= 50_000 else "standard"

    @property
    def churned_at(self) -> datetime | None:
        last = self.renewals[-1] if self.renewals else None
        return last.recorded_at if last is not None and last.outcome == "churned" else None

    @property
    def needs_review(self) -> bool:
        """Sales' default thresholds: 100,000 or 3 commitments (crm sales' review policy)."""
        return self.value >= 100_000 or self.commitments >= 3


@dataclass(frozen=True)
class Plan:
    seed: int
    now: datetime
    accounts: list[AccountPlan]

    @property
    def churned(self) -> int:
        return sum(1 for a in self.accounts if a.churned_at is not None)

    @property
    def renewals_recorded(self) -> int:
        return sum(1 for a in self.accounts for r in a.renewals if r.recorded_at is not None)


class _Draw:
    """The seeded draws, named for what they mean."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def chance(self, p: float) -> bool:
        return self.rng.random() < max(0.0, min(1.0, p))

    def days(self, low: float, high: float) -> timedelta:
        return timedelta(days=self.rng.uniform(low, high))

    def hours(self, low: float, high: float) -> timedelta:
        return timedelta(hours=self.rng.uniform(low, high))

    def score(self, mean: float, spread: float, low: int, high: int) -> int:
        return max(low, min(high, round(self.rng.gauss(mean, spread))))

    def poisson(self, mean: float) -> int:
        limit, k, p = math.exp(-mean), 0, 1.0
        while True:
            p *= self.rng.random()
            if p <= limit:
                return k
            k += 1


def plan_history(seed: int, accounts: int, now: datetime) -> Plan:
    """Every account's life up to ``now`` (see the module's docstring)."""
    draw = _Draw(random.Random(seed))
    plans = [_account(draw, i, now) for i in range(accounts)]
    return Plan(seed, now, plans)


def _account(draw: _Draw, index: int, now: datetime) -> AccountPlan:
    rng = draw.rng
    won = now - draw.days(NEWEST_WIN_DAYS, HISTORY_DAYS)
    size = rng.random()
    value = (
        rng.randrange(250_000, 600_000, 5_000)
        if size < 0.05
        else rng.randrange(50_000, 240_000, 1_000)
        if size < 0.3
        else rng.randrange(8_000, 49_000, 500)
    )
    plan = AccountPlan(
        index=index,
        name=f"Demo Customer {index + 1:03d}",
        channel=rng.choice(CHANNELS),
        campaign=rng.choice(CAMPAIGNS),
        risk=rng.betavariate(2, 5),
        value=value,
        commitments=rng.choice((0, 1, 1, 2, 2, 3)),
        captured_at=won - draw.days(20, 45),
        won_at=won,
    )
    plan.onboarding = _onboarding(draw, plan, now)
    _renewals(draw, plan, now)
    end = min(now, plan.churned_at or now)
    plan.tickets = _tickets(draw, plan, end, now)
    plan.checkins = _checkins(draw, plan, end)
    plan.nps = _nps(draw, plan, end, now)
    plan.usage = _usage(draw, plan, end)
    plan.items = _items(draw, plan, now)
    plan.flag = _flag(draw, plan, end)
    return plan


def _onboarding(draw: _Draw, plan: AccountPlan, now: datetime) -> list[datetime]:
    """The four checklist items, the first a day or two after the win; a risky account is
    slower, and one won recently may not be through yet."""
    out, at = [], plan.won_at + draw.hours(4, 60)
    for _ in range(4):
        if at >= now:
            break
        out.append(at)
        at += draw.days(2, 10 + 30 * plan.risk)
    return out


def _renewals(draw: _Draw, plan: AccountPlan, now: datetime) -> None:
    """Every renewal due before ``now``: recorded up to 3 weeks early or (one in four, churn or
    not) up to 3 weeks late; one still unrecorded now is left overdue."""
    value, due = plan.value, plan.won_at + timedelta(days=365)
    while due < now:
        late = draw.chance(0.25)
        recorded: datetime | None = due + (draw.days(1, 21) if late else -draw.days(0, 21))
        if recorded is not None and recorded >= now:
            recorded = None
        outcome, new_value, reason = _renewal_outcome(draw, plan, value)
        plan.renewals.append(Renewal(due, recorded, outcome, new_value, reason))
        if outcome == "churned" or recorded is None:
            return
        value, due = new_value, due + timedelta(days=365)


def _renewal_outcome(
    draw: _Draw, plan: AccountPlan, value: int
) -> tuple[Literal["renewed", "downgraded", "churned"], int, str | None]:
    rng = draw.rng
    # About one renewal in six churns (B2B software's usual yearly logo churn is 10-20%).
    if draw.chance(0.03):  # from outside: the customer closed or lost its budget
        return "churned", 0, rng.choice(OUTSIDE_CHURN_REASONS)
    if draw.chance(0.01 + 1.0 * plan.risk**2):
        return "churned", 0, rng.choice(RISK_CHURN_REASONS)
    if draw.chance(0.05 + 0.25 * plan.risk):
        return "downgraded", round(value * rng.uniform(0.55, 0.9)), None
    return "renewed", round(value * rng.uniform(1.0, 1.18)), None


def _tickets(draw: _Draw, plan: AccountPlan, end: datetime, now: datetime) -> list[Ticket]:
    out: list[Ticket] = []
    months = max(0.0, (end - plan.won_at).days / 30.4)
    for _ in range(draw.poisson(months * (0.12 + 0.55 * plan.risk))):
        opened = plan.won_at + draw.days(3, max(3.5, (end - plan.won_at).days))
        priority = draw.rng.choices([p for p, _ in PRIORITIES], [w for _, w in PRIORITIES])[0]
        first_h, resolve_h = SLA_HOURS[priority]
        breached = draw.chance(0.05 + 0.45 * plan.risk)
        first = opened + timedelta(hours=first_h * draw.rng.uniform(0.05, 0.9))
        factor = draw.rng.uniform(1.1, 2.5) if breached else draw.rng.uniform(0.1, 0.9)
        resolved = max(first + timedelta(minutes=5), opened + timedelta(hours=resolve_h * factor))
        if resolved + timedelta(days=2) >= now:
            continue  # still being worked on: the demo plays finished tickets
        answers = draw.chance(0.6)
        csat = draw.score(4.6 - 2.4 * plan.risk - (0.6 if breached else 0), 0.8, 1, 5) if answers else None
        out.append(
            Ticket(opened, priority, first, resolved, csat, resolved + draw.hours(2, 40) if answers else None)
        )
    return sorted(out, key=lambda t: t.opened_at)


def _checkins(draw: _Draw, plan: AccountPlan, end: datetime) -> list[CheckIn]:
    """On the tier's cadence, a few days either side; a risky account skips more of them."""
    out, every = [], CHECKIN_EVERY[plan.tier]
    at = plan.won_at + timedelta(days=every)
    while at < end:
        held = at + draw.days(-5, 8)
        if held < end and not draw.chance(0.08 + 0.35 * plan.risk):
            negative = draw.chance(0.04 + 0.5 * plan.risk)
            positive = not negative and draw.chance(0.75 - 0.6 * plan.risk)
            out.append(CheckIn(held, "negative" if negative else "positive" if positive else "neutral"))
        at += timedelta(days=every)
    return out


def _nps(draw: _Draw, plan: AccountPlan, end: datetime, now: datetime) -> list[Nps]:
    out, at = [], plan.won_at + draw.days(40, 60)
    while at < end:
        answered = at + draw.days(0.2, 6)
        if draw.chance(0.7) and answered < now:
            out.append(Nps(at, draw.score(9.2 - 7.5 * plan.risk, 1.6, 0, 10), answered))
        else:
            out.append(Nps(at, None, None))
        at += timedelta(days=NPS_EVERY_DAYS) + draw.days(0, 10)
    return out


def _usage(draw: _Draw, plan: AccountPlan, end: datetime) -> list[tuple[datetime, float]]:
    """A usage report every two months (the desk scores the account again on each)."""
    out, at = [], plan.won_at + timedelta(days=USAGE_EVERY_DAYS)
    level = max(0.05, min(1.0, draw.rng.gauss(0.85 - 0.65 * plan.risk, 0.12)))
    while at < end:
        level = max(0.02, min(1.0, level + draw.rng.gauss(-0.01 * plan.risk, 0.06)))
        out.append((at, round(level, 2)))
        at += timedelta(days=USAGE_EVERY_DAYS)
    return out


def _items(draw: _Draw, plan: AccountPlan, now: datetime) -> list[Item]:
    """Voice of the customer: a bad CSAT, a negative check-in or a detractor NPS raises an item
    now and then; the department accepts it and closes most in time, some late, a few never."""
    sources: list[tuple[datetime, str]] = [
        (t.answered_at, "ticket") for t in plan.tickets if t.answered_at and (t.csat or 5) <= 2
    ]
    sources += [(c.held_at, "check_in") for c in plan.checkins if c.sentiment == "negative"]
    sources += [(n.answered_at, "survey") for n in plan.nps if n.answered_at and (n.score or 10) <= 6]
    out = []
    for at, source in sorted(sources):
        if not draw.chance(0.55):
            continue
        raised = at + draw.hours(1, 30)
        department: Department = draw.rng.choices(("sales", "marketing", "customer-success"), (4, 2, 4))[0]
        due = raised + draw.days(7, 21)
        out.append(_item_fate(draw, raised, department, source, due, now))
    return [i for i in out if i.raised_at < now]


def _item_fate(
    draw: _Draw, raised: datetime, department: Department, source: str, due: datetime, now: datetime
) -> Item:
    accepted = raised + draw.hours(2, 72)
    closed: datetime | None = accepted + draw.days(1, 25)
    outcome: Literal["done", "declined", "open"] = "declined" if draw.chance(0.15) else "done"
    if draw.chance(0.08) or (closed is not None and closed >= now):
        outcome, closed = "open", None  # nobody closed it (yet): it shows as overdue
    return Item(raised, department, source, due, accepted if accepted < now else None, closed, outcome)


def _flag(draw: _Draw, plan: AccountPlan, end: datetime) -> Flag | None:
    """One in six accounts with commitments has one flagged after the win; sales answers."""
    if not plan.commitments or not draw.chance(1 / 6):
        return None
    flagged = plan.won_at + draw.days(20, 60)
    if flagged >= end:
        return None
    acknowledged = flagged + draw.hours(3, 96)
    resolved = acknowledged + draw.days(2, 20)
    return Flag(flagged, acknowledged, resolved if resolved < end else None)
