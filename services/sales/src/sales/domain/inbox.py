"""The sales inbox: qualified leads waiting for a verdict, and the verdict rules.

An item is ``pending`` until its owner (or a manager) decides: ``accepted``
(an opportunity is opened), ``rejected`` (with a reason code) or ``recycled``
(back to marketing's nurturing). A verdict is final: a second one is a 409.
The response is due ``sla_minutes`` after the handoff was received; a pending
item past that is overdue.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum

from crm_contracts.events.sales import Verdict
from crm_platform.errors import Conflict, RuleViolation

from sales.domain.access import Actor, require_access

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
