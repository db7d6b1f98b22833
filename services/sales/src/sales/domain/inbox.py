"""The sales inbox: qualified leads waiting for a verdict, and the verdict rules.

An item is ``pending`` until its owner (or a manager) decides: ``accepted``
(an opportunity is opened), ``rejected`` (with a reason code) or ``recycled``
(back to marketing's nurturing). A verdict is final: a second one is a 409.
The response is due ``sla_minutes`` after the handoff was received; a pending
item past that is overdue.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from crm_contracts import Envelope, uuids
from crm_contracts.events.leads import LeadQualifiedV1
from crm_contracts.events.sales import LeadAssignedV1, LeadVerdictV1, RejectReason, Verdict
from crm_platform.actor import Actor
from crm_platform.clock import to_millis
from crm_platform.errors import Conflict, RuleViolation

from sales.domain.access import require_access
from sales.domain.assignment import AssignedBy
from sales.domain.opportunity import Opportunity

MIN_SLA_MINUTES = 1
MAX_SLA_MINUTES = 7 * 24 * 60
DEFAULT_SLA_MINUTES = 60


class InboxStatus(StrEnum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    RECYCLED = "recycled"


VERDICT_STATUS: dict[Verdict, InboxStatus] = {
    Verdict.ACCEPTED: InboxStatus.ACCEPTED,
    Verdict.REJECTED: InboxStatus.REJECTED,
    Verdict.RECYCLED: InboxStatus.RECYCLED,
}


def check_sla_minutes(minutes: int) -> int:
    if not MIN_SLA_MINUTES <= minutes <= MAX_SLA_MINUTES:
        raise RuleViolation(
            f"lead_response_sla_minutes must be between {MIN_SLA_MINUTES} and {MAX_SLA_MINUTES}",
            lead_response_sla_minutes=minutes,
        )
    return minutes


def response_due_at(received_at: datetime, sla_minutes: int) -> datetime:
    return received_at + timedelta(minutes=sla_minutes)


def is_overdue(status: InboxStatus, due_at: datetime, now: datetime) -> bool:
    return status == InboxStatus.PENDING and now > due_at


def responded_within_sla(due_at: datetime, decided_at: datetime | None) -> bool | None:
    return None if decided_at is None else decided_at <= due_at


def check_reason(verdict: Verdict, reason_code: RejectReason | None) -> None:
    if verdict == Verdict.REJECTED and reason_code is None:
        raise RuleViolation("a rejection needs a reason code", reasons=[r.value for r in RejectReason])


def check_verdict(status: InboxStatus, owner: str | None, actor: Actor) -> None:
    """The owner, or a manager, gives one verdict on a pending item.

    Access is checked first: someone else's rep learns nothing about its state.
    An unassigned item can only be decided by a manager.
    """
    require_access(actor, owner, "inbox item")
    if status != InboxStatus.PENDING:
        raise Conflict(f"this lead already has a verdict: {status}", status=status.value)


def check_assign(status: InboxStatus) -> None:
    if status != InboxStatus.PENDING:
        raise Conflict(
            f"only a pending inbox item can be (re)assigned; this one is {status}", status=status.value
        )


@dataclass(frozen=True)
class AssignmentRecord:
    owner: str
    by: str
    how: str
    at: datetime
    counter: int | None


@dataclass(frozen=True)
class VerdictRecord:
    verdict: Verdict
    reason_code: RejectReason | None
    note: str | None
    decided_by: str
    decided_at: datetime
    opportunity_id: str | None


@dataclass
class InboxItem:
    """One ``lead.qualified`` handoff waiting for (or given) sales' verdict; ``id`` is its event id."""

    id: str
    lead_id: str
    company: str
    handoff: LeadQualifiedV1
    correlation_id: str
    received_at: datetime
    handed_off_at: datetime
    response_due_at: datetime
    sla_minutes: int
    updated_at: datetime
    status: InboxStatus = InboxStatus.PENDING
    owner: str | None = None
    assigned_by: str | None = None
    assigned_at: datetime | None = None
    assignment_history: list[AssignmentRecord] = field(default_factory=list)
    handoff_number: int = 1
    handoff_event_ids: list[str] = field(default_factory=list)
    superseded_event_ids: list[str] = field(default_factory=list)
    last_handed_off_at: datetime | None = None
    verdict: VerdictRecord | None = None
    # The held key its handoff's contact was opened with (``held:<owner>:<person id>``, a sealed
    # handoff; None: a plaintext one): erasure finds the item through it (crm_platform.erasure,
    # ``Target.by_held_key``), so the store keeps it instead of the contact's hash.
    person_key: str | None = None

    @classmethod
    def receive(
        cls,
        event: LeadQualifiedV1,
        envelope: Envelope,
        *,
        now: datetime,
        sla_minutes: int,
        handoff_number: int,
        person_key: str | None = None,
    ) -> InboxItem:
        """A new item for a handoff, due ``sla_minutes`` after it was received (``person_key``:
        the held key its contact was opened with)."""
        event_id = uuids.text(envelope.event_id)
        return cls(
            id=event_id,
            lead_id=event.lead_id,
            company=event.company,
            handoff=event,
            correlation_id=envelope.correlation_id,
            received_at=now,
            handed_off_at=envelope.occurred_at,
            response_due_at=response_due_at(now, sla_minutes),
            sla_minutes=sla_minutes,
            updated_at=now,
            handoff_number=handoff_number,
            handoff_event_ids=[event_id],
            person_key=person_key,
        )

    @property
    def latest_handoff_at(self) -> datetime:
        """When the newest handoff behind this item occurred (a refresh moves it on), to the ms."""
        return to_millis(self.last_handed_off_at or self.handed_off_at)

    def is_newer_than(self, envelope: Envelope) -> bool:
        """Whether this item already reflects a handoff that occurred after ``envelope``'s."""
        return self.latest_handoff_at > to_millis(envelope.occurred_at)

    def supersede(self, envelope: Envelope) -> None:
        """Remember a re-sent older handoff that arrived after a newer one (and changes nothing)."""
        self.superseded_event_ids.append(str(envelope.event_id))

    def refresh(
        self, event: LeadQualifiedV1, envelope: Envelope, *, now: datetime, person_key: str | None = None
    ) -> None:
        """Marketing handed the pending lead over again: the newer handoff replaces the old one
        (its contact with it, and the held key that contact was opened with)."""
        self.handoff, self.company = event, event.company
        self.person_key = person_key
        self.updated_at = now
        self.last_handed_off_at = envelope.occurred_at
        self.handoff_event_ids.append(str(envelope.event_id))

    def check_assignable(self) -> None:
        check_assign(self.status)

    def assign(
        self, owner: str, *, how: AssignedBy, by: str, counter: int | None, now: datetime
    ) -> LeadAssignedV1 | None:
        """Give the item to ``owner``; None (nothing changes) when they own it already."""
        check_assign(self.status)
        if owner == self.owner:
            return None
        self.owner, self.assigned_by, self.assigned_at, self.updated_at = owner, how.value, now, now
        self.assignment_history.append(AssignmentRecord(owner, by, how.value, now, counter))
        return LeadAssignedV1(lead_id=self.lead_id, owner=owner, response_due_at=self.response_due_at)

    def decide(
        self,
        verdict: Verdict,
        actor: Actor,
        *,
        now: datetime,
        reason_code: RejectReason | None = None,
        note: str | None = None,
        opportunity_id: str | None = None,
    ) -> LeadVerdictV1:
        """The owner's (or a manager's) one verdict on this pending item."""
        check_reason(verdict, reason_code)
        check_verdict(self.status, self.owner, actor)
        self.verdict = VerdictRecord(verdict, reason_code, note, actor.user_id, now, opportunity_id)
        self.status, self.updated_at = VERDICT_STATUS[verdict], now
        return LeadVerdictV1(
            lead_id=self.lead_id,
            verdict=verdict,
            reason_code=reason_code,
            note=note,
            decided_by=actor.user_id,
            opportunity_id=opportunity_id,
        )

    def open_opportunity(self, opportunity_id: str, *, stage: str, by: Actor, now: datetime) -> Opportunity:
        """The opportunity an acceptance opens: the item's owner keeps it (unassigned: the decider)."""
        return Opportunity.from_lead(
            opportunity_id,
            self.handoff,
            inbox_item_id=self.id,
            stage=stage,
            owner=self.owner or by.user_id,
            assigned_by=(self.assigned_by or AssignedBy.ROUND_ROBIN.value)
            if self.owner
            else AssignedBy.MANAGER.value,
            correlation_id=self.correlation_id,
            by=by.user_id,
            now=now,
        )

    def overdue(self, now: datetime) -> bool:
        return is_overdue(self.status, self.response_due_at, now)

    @property
    def within_sla(self) -> bool | None:
        return responded_within_sla(self.response_due_at, self.verdict.decided_at if self.verdict else None)
