"""A support case: request, progress, result; SLA timers; the customer's rating.

Pure: every operation takes ``now`` from the caller's clock, so SLA rules are
tested with any time the test likes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from crm_contracts.events.service_desk import TicketOpenedV2, TicketRatedV1, TicketResolvedV1
from crm_platform.custom_fields import FieldSet, RecordType, StoredValue, to_extensions
from crm_platform.errors import Conflict, RuleViolation

from service_desk.domain.config import Priority, SlaTarget

CSAT_MIN, CSAT_MAX = 1, 5
NO_CUSTOM_FIELDS = FieldSet(RecordType.TICKET)


class TicketStatus(StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"


class SlaState(StrEnum):
    ON_TRACK = "on_track"
    AT_RISK = "at_risk"
    BREACHED = "breached"
    MET = "met"  # only for a target already reached in time


_SEVERITY = {SlaState.MET: 0, SlaState.ON_TRACK: 0, SlaState.AT_RISK: 1, SlaState.BREACHED: 2}


@dataclass(kw_only=True)
class ProgressNote:
    note: str
    by: str
    at: datetime


@dataclass(kw_only=True)
class Ticket:
    """One support case; its methods enforce the case's rules and return the events they cause."""

    ticket_id: str
    account_id: str
    account_name: str
    subject: str
    request: str
    priority: Priority
    status: TicketStatus = TicketStatus.OPEN
    opened_by: str
    assignee: str
    opened_at: datetime
    first_response_due_at: datetime
    resolution_due_at: datetime
    first_response_at: datetime | None = None
    progress: list[ProgressNote] = field(default_factory=list)
    resolved_at: datetime | None = None
    resolved_by: str | None = None
    result: str | None = None
    first_response_breached: bool | None = None
    resolution_breached: bool | None = None
    csat: int | None = None
    rated_at: datetime | None = None
    rated_by: str | None = None
    # Custom field values (crm_platform.custom_fields), checked by FieldSet.create / edit.
    custom: dict[str, StoredValue] = field(default_factory=dict)

    @property
    def first_response_seconds(self) -> float | None:
        if self.first_response_at is None:
            return None
        return _seconds_between(self.opened_at, self.first_response_at)

    @property
    def resolution_seconds(self) -> float | None:
        if self.resolved_at is None:
            return None
        return _seconds_between(self.opened_at, self.resolved_at)

    def opened(self, fields: FieldSet = NO_CUSTOM_FIELDS) -> TicketOpenedV2:
        """``ticket.opened`` v2: the custom values ``fields`` defines (text left out)."""
        return TicketOpenedV2(
            ticket_id=self.ticket_id,
            account_id=self.account_id,
            priority=self.priority.value,
            assignee=self.assignee,
            custom=to_extensions(fields, self.custom) if self.custom else {},
        )

    def add_progress(self, note: str, *, by: str, now: datetime) -> bool:
        """Record progress; returns True when this note is the ticket's first response."""
        note = note.strip()
        if not note:
            raise RuleViolation("a progress note must not be blank", field="note")
        if self.status == TicketStatus.RESOLVED:
            raise Conflict(
                f"ticket {self.ticket_id} is resolved; progress can no longer be added",
                ticket_id=self.ticket_id,
                status=self.status.value,
            )
        self.progress.append(ProgressNote(note=note, by=by, at=now))
        if self.first_response_at is None:
            self.first_response_at = now
            return True
        return False

    def resolve(self, result: str, *, by: str, now: datetime) -> TicketResolvedV1:
        """Close the case with its result and record whether each SLA target was kept.

        Resolving answers the customer: with no earlier progress note, the
        resolution is also the first response.
        """
        result = result.strip()
        if not result:
            raise RuleViolation("a resolution needs a result", field="result")
        if self.status == TicketStatus.RESOLVED:
            raise Conflict(
                f"ticket {self.ticket_id} is already resolved",
                ticket_id=self.ticket_id,
                status=self.status.value,
            )
        if self.first_response_at is None:
            self.first_response_at = now
        self.status = TicketStatus.RESOLVED
        self.resolved_at, self.resolved_by, self.result = now, by, result
        self.first_response_breached = self.first_response_at > self.first_response_due_at
        self.resolution_breached = now > self.resolution_due_at
        return TicketResolvedV1(
            ticket_id=self.ticket_id,
            account_id=self.account_id,
            first_response_seconds=self.first_response_seconds,
            resolution_seconds=_seconds_between(self.opened_at, now),
            first_response_breached=self.first_response_breached,
            resolution_breached=self.resolution_breached,
        )

    def rate(self, csat: int, *, by: str, now: datetime) -> TicketRatedV1:
        """The customer's satisfaction (1-5), once, and only for a resolved case."""
        validate_csat(csat)
        if self.status != TicketStatus.RESOLVED:
            raise Conflict(
                f"ticket {self.ticket_id} can be rated only after it is resolved (status: "
                f"{self.status.value})",
                ticket_id=self.ticket_id,
                status=self.status.value,
            )
        if self.csat is not None:
            raise Conflict(
                f"ticket {self.ticket_id} was already rated ({self.csat})",
                ticket_id=self.ticket_id,
                csat=self.csat,
            )
        self.csat, self.rated_at, self.rated_by = csat, now, by
        return TicketRatedV1(ticket_id=self.ticket_id, account_id=self.account_id, csat=csat)


def validate_csat(csat: int) -> int:
    if isinstance(csat, bool) or not isinstance(csat, int) or not CSAT_MIN <= csat <= CSAT_MAX:
        raise RuleViolation(
            f"csat must be a whole number from {CSAT_MIN} to {CSAT_MAX}", field="csat", value=csat
        )
    return csat


def open_ticket(
    *,
    ticket_id: str,
    account_id: str,
    account_name: str,
    subject: str,
    request: str,
    priority: Priority,
    opened_by: str,
    assignee: str,
    target: SlaTarget,
    now: datetime,
    custom: dict[str, StoredValue] | None = None,
) -> Ticket:
    subject, request = subject.strip(), request.strip()
    if not subject:
        raise RuleViolation("a ticket needs a subject", field="subject")
    if not request:
        raise RuleViolation("a ticket needs the customer's request", field="request")
    return Ticket(
        ticket_id=ticket_id,
        account_id=account_id,
        account_name=account_name,
        subject=subject,
        request=request,
        priority=priority,
        opened_by=opened_by,
        assignee=assignee,
        opened_at=now,
        first_response_due_at=now + target.first_response,
        resolution_due_at=now + target.resolution,
        custom=dict(custom or {}),
    )


def target_state(
    *,
    started_at: datetime,
    due_at: datetime,
    reached_at: datetime | None,
    now: datetime,
    at_risk_fraction: float,
) -> SlaState:
    """One SLA target: met/breached once reached; else on_track, at_risk or breached by now."""
    if reached_at is not None:
        return SlaState.MET if reached_at <= due_at else SlaState.BREACHED
    if now > due_at:
        return SlaState.BREACHED
    allowed = (due_at - started_at).total_seconds()
    elapsed = (now - started_at).total_seconds()
    if allowed <= 0 or elapsed >= allowed * at_risk_fraction:
        return SlaState.AT_RISK
    return SlaState.ON_TRACK


@dataclass(frozen=True)
class SlaView:
    """The SLA picture of a ticket at ``now``; ``state`` is None once the ticket is resolved."""

    state: SlaState | None
    first_response: SlaState
    resolution: SlaState
    first_response_due_at: datetime
    resolution_due_at: datetime
    first_response_breached: bool
    resolution_breached: bool


def sla_view(ticket: Ticket, now: datetime, at_risk_fraction: float) -> SlaView:
    first = target_state(
        started_at=ticket.opened_at,
        due_at=ticket.first_response_due_at,
        reached_at=ticket.first_response_at,
        now=now,
        at_risk_fraction=at_risk_fraction,
    )
    resolution = target_state(
        started_at=ticket.opened_at,
        due_at=ticket.resolution_due_at,
        reached_at=ticket.resolved_at,
        now=now,
        at_risk_fraction=at_risk_fraction,
    )
    state: SlaState | None = None
    if ticket.status == TicketStatus.OPEN:
        worst = max((first, resolution), key=lambda s: _SEVERITY[s])
        state = SlaState.ON_TRACK if worst == SlaState.MET else worst
    return SlaView(
        state=state,
        first_response=first,
        resolution=resolution,
        first_response_due_at=ticket.first_response_due_at,
        resolution_due_at=ticket.resolution_due_at,
        first_response_breached=first == SlaState.BREACHED,
        resolution_breached=resolution == SlaState.BREACHED,
    )


def _seconds_between(start: datetime, end: datetime) -> float:
    return max(0.0, (end - start).total_seconds())
