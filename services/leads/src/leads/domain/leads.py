"""The lead: capture and duplicate merge, behaviour and qualification, sales' verdict.

Status flow::

    new --behaviour--> nurturing --score >= threshold--> qualified (handed to sales, once)
    qualified --verdict--> accepted | rejected | recycled
    recycled --new behaviour--> nurturing --score >= threshold--> qualified (handed off again)

Accepted and rejected are final for marketing: behaviour is still recorded and
scored, but the lead is never handed off again. A recycled lead starts a new
scoring cycle: its score restarts from zero and only behaviour that occurred
after the verdict counts, so "crossing the threshold again" needs new
engagement, not one more page view on an old score. Lifetime behaviour totals
are kept for the behaviour summary sales receives.

Everything here is pure: no clock (callers pass ``now``), no I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from crm_contracts.events.common import Behaviour

from leads.domain.scoring import Reason, Score, ScoringRules, score

MAX_TOUCHES_KEPT = 100
MAX_CLOCK_SKEW = timedelta(minutes=5)


class LeadStatus(StrEnum):
    NEW = "new"
    NURTURING = "nurturing"
    QUALIFIED = "qualified"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    RECYCLED = "recycled"


TRANSITIONS: Mapping[LeadStatus, frozenset[LeadStatus]] = {
    LeadStatus.NEW: frozenset({LeadStatus.NURTURING}),
    LeadStatus.NURTURING: frozenset({LeadStatus.QUALIFIED}),
    LeadStatus.QUALIFIED: frozenset({LeadStatus.ACCEPTED, LeadStatus.REJECTED, LeadStatus.RECYCLED}),
    LeadStatus.RECYCLED: frozenset({LeadStatus.NURTURING}),
    LeadStatus.ACCEPTED: frozenset(),
    LeadStatus.REJECTED: frozenset(),
}

# Sales' verdict -> the status it puts a qualified lead in.
VERDICT_STATUS: Mapping[str, LeadStatus] = {
    "accepted": LeadStatus.ACCEPTED,
    "rejected": LeadStatus.REJECTED,
    "recycled": LeadStatus.RECYCLED,
}


class InvalidTransition(ValueError):
    def __init__(self, current: LeadStatus, target: LeadStatus) -> None:
        super().__init__(f"a lead cannot go from '{current}' to '{target}'")
        self.current = current
        self.target = target


def can_transition(current: LeadStatus, target: LeadStatus) -> bool:
    return target in TRANSITIONS[current]


def transition(current: LeadStatus, target: LeadStatus) -> LeadStatus:
    if not can_transition(current, target):
        raise InvalidTransition(current, target)
    return target


def normalize_email(raw: str) -> str:
    """The identity of a lead: the email, trimmed and case-folded."""
    return raw.strip().lower()


def occurred_at_problem(occurred_at: datetime, now: datetime) -> str | None:
    """Why a behaviour's time is unacceptable, or None. Only the future (beyond skew) is."""
    if occurred_at > now + MAX_CLOCK_SKEW:
        return f"is in the future (more than {int(MAX_CLOCK_SKEW.total_seconds() // 60)} min ahead)"
    return None


@dataclass(frozen=True)
class Consent:
    marketing_email: bool
    captured_at: datetime


@dataclass(frozen=True)
class Touch:
    channel: str
    campaign: str | None
    at: datetime


@dataclass(frozen=True)
class Capture:
    """One capture of a lead (a form, an import row, an API call), already validated."""

    email: str
    name: str
    source_channel: str
    marketing_email: bool
    company: str | None = None
    campaign: str | None = None


@dataclass(frozen=True)
class Lead:
    id: str
    email: str
    name: str
    company: str | None
    origin_channel: str
    campaign: str | None
    consent: Consent
    status: LeadStatus
    created_at: datetime
    updated_at: datetime
    touches: tuple[Touch, ...] = ()
    touch_count: int = 1
    behaviour_totals: Mapping[Behaviour, int] = field(default_factory=dict)
    cycle_counts: Mapping[Behaviour, int] = field(default_factory=dict)
    cycle_started_at: datetime | None = None
    score: float = 0.0
    score_reasons: tuple[Reason, ...] = ()
    rules_version: int | None = None
    threshold: float | None = None
    last_behaviour_at: datetime | None = None
    qualified_at: datetime | None = None
    handoff_count: int = 0
    recycle_count: int = 0
    verdict: str | None = None
    verdict_reason_code: str | None = None
    verdict_at: datetime | None = None


def _blank(value: str | None) -> bool:
    return value is None or not value.strip()


def new_lead(lead_id: str, capture: Capture, now: datetime) -> Lead:
    return Lead(
        id=lead_id,
        email=normalize_email(capture.email),
        name=capture.name,
        company=None if _blank(capture.company) else capture.company,
        origin_channel=capture.source_channel,
        campaign=None if _blank(capture.campaign) else capture.campaign,
        consent=Consent(capture.marketing_email, now),
        status=LeadStatus.NEW,
        created_at=now,
        updated_at=now,
        touches=(Touch(capture.source_channel, capture.campaign, now),),
        touch_count=1,
    )


def merge(lead: Lead, capture: Capture, now: datetime) -> Lead:
    """The same person captured again: one lead, never two.

    - empty fields are filled from the new capture, filled ones are kept;
    - the first source channel stays the origin; the new capture is a touch;
    - consent follows the person's latest statement (an opt-out must win, and a
      fresh opt-in is just as explicit);
    - the status is untouched (a capture is not behaviour).
    """
    if normalize_email(capture.email) != lead.email:
        raise ValueError("merge needs the same email")
    touches = (*lead.touches, Touch(capture.source_channel, capture.campaign, now))
    return dataclasses.replace(
        lead,
        name=capture.name if _blank(lead.name) else lead.name,
        company=lead.company
        if not _blank(lead.company)
        else (None if _blank(capture.company) else capture.company),
        campaign=lead.campaign
        if not _blank(lead.campaign)
        else (None if _blank(capture.campaign) else capture.campaign),
        consent=Consent(capture.marketing_email, now),
        touches=touches[-MAX_TOUCHES_KEPT:],
        touch_count=lead.touch_count + 1,
        updated_at=now,
    )


@dataclass(frozen=True)
class BehaviourOutcome:
    lead: Lead
    score: Score
    in_cycle: bool  # False: occurred before the lead was recycled; kept but not scored
    qualified: bool  # True: this behaviour hands the lead to sales (emit the handoff)


def _plus_one(counts: Mapping[Behaviour, int], behaviour: Behaviour) -> dict[Behaviour, int]:
    out = dict(counts)
    out[behaviour] = out.get(behaviour, 0) + 1
    return out


def record_behaviour(
    lead: Lead, behaviour: Behaviour, occurred_at: datetime, rules: ScoringRules, now: datetime
) -> BehaviourOutcome:
    """Count the behaviour, re-score with the current rules, qualify on crossing the threshold."""
    in_cycle = lead.cycle_started_at is None or occurred_at >= lead.cycle_started_at
    totals = _plus_one(lead.behaviour_totals, behaviour)
    cycle = _plus_one(lead.cycle_counts, behaviour) if in_cycle else dict(lead.cycle_counts)
    rescored = score(cycle, rules)

    status = lead.status
    if in_cycle and status in (LeadStatus.NEW, LeadStatus.RECYCLED):
        status = transition(status, LeadStatus.NURTURING)
    qualified = status == LeadStatus.NURTURING and rescored.qualifies
    if qualified:
        status = transition(status, LeadStatus.QUALIFIED)

    last = lead.last_behaviour_at
    updated = dataclasses.replace(
        lead,
        status=status,
        behaviour_totals=totals,
        cycle_counts=cycle,
        score=rescored.total,
        score_reasons=rescored.reasons,
        rules_version=rescored.rules_version,
        threshold=rescored.threshold,
        last_behaviour_at=occurred_at if last is None or occurred_at > last else last,
        qualified_at=now if qualified else lead.qualified_at,
        handoff_count=lead.handoff_count + (1 if qualified else 0),
        updated_at=now,
    )
    return BehaviourOutcome(updated, rescored, in_cycle, qualified)


@dataclass(frozen=True)
class VerdictOutcome:
    lead: Lead
    applied: bool
    ignored_because: str | None = None


def apply_verdict(
    lead: Lead, verdict: str, reason_code: str | None, decided_at: datetime, now: datetime
) -> VerdictOutcome:
    """Sales' verdict (decided at ``decided_at``) on a lead it was handed.

    Only a lead in 'qualified' takes a verdict. Any other status means the verdict
    is late, repeated or about a lead sales was never handed: it is ignored
    (the caller logs it) rather than rewriting history.
    """
    target = VERDICT_STATUS.get(verdict)
    if target is None:
        raise ValueError(f"unknown verdict '{verdict}'")
    if lead.status != LeadStatus.QUALIFIED:
        return VerdictOutcome(lead, False, f"lead is '{lead.status}', not 'qualified'")
    status = transition(lead.status, target)
    updated = dataclasses.replace(
        lead,
        status=status,
        verdict=verdict,
        verdict_reason_code=reason_code,
        verdict_at=decided_at,
        updated_at=now,
    )
    if status == LeadStatus.RECYCLED:
        updated = dataclasses.replace(
            updated,
            cycle_counts={},
            cycle_started_at=decided_at,
            score=0.0,
            score_reasons=(),
            recycle_count=lead.recycle_count + 1,
        )
    return VerdictOutcome(updated, True)


def behaviour_summary(lead: Lead) -> dict[Behaviour, int]:
    """Lifetime occurrences per behaviour (what sales sees in the handoff)."""
    return {b: lead.behaviour_totals[b] for b in Behaviour if lead.behaviour_totals.get(b, 0) > 0}
