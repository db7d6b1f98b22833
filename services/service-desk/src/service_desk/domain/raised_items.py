"""The action items customer success raised, as it follows them: voice of the customer becomes work.

From a ticket, a survey comment, a check-in or an account note, customer success raises an
item for the department that owns the fix (``action_item.raised_for_<department>``); every
step that department takes comes back (``action_item.updated_by_<department>``) and is kept
on the raised item, so the customer's record shows it. Steps may arrive out of order (a
re-sent handoff after later ones): the history stays sorted by time and the status follows
the latest step only. Pure: ids and time come in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from crm_contracts import Event
from crm_contracts.events.action_items import (
    CUSTOMER_SUCCESS,
    RAISED_BY_DEPARTMENT,
    ActionItemStatus,
    ActionItemUpdatedByCustomerSuccessV1,
    ActionItemUpdatedByMarketingV1,
    ActionItemUpdatedBySalesV1,
    OwningDepartment,
    SourceKind,
    SourceRecord,
)
from crm_platform.errors import RuleViolation

from service_desk.domain.accounts import Account

Outcome = ActionItemUpdatedByMarketingV1 | ActionItemUpdatedBySalesV1 | ActionItemUpdatedByCustomerSuccessV1
CLOSING = (ActionItemStatus.DONE, ActionItemStatus.DECLINED)


@dataclass(frozen=True)
class RaisedSource:
    """Where the customer said it: a ticket, survey, check-in or note of this desk."""

    kind: str
    record_id: str
    excerpt: str | None = None


@dataclass(frozen=True)
class RaisedStep:
    """One step the owning department took on the item."""

    status: str
    by: str
    at: datetime
    assignee: str | None = None
    reason: str | None = None
    automatic: bool = False
    escalated_to: str | None = None

    @classmethod
    def of(cls, event: Outcome) -> RaisedStep:
        return cls(
            status=str(event.status),
            by=event.acted_by,
            at=event.acted_at,
            assignee=event.assignee,
            reason=event.reason,
            automatic=event.automatic,
            escalated_to=event.escalated_to,
        )


@dataclass(frozen=True)
class Raise:
    """What a user asks for when raising an item."""

    department: str
    title: str
    details: str | None
    owner: str | None
    due_at: datetime
    source: RaisedSource


def require_future(due_at: datetime, now: datetime) -> None:
    if due_at <= now:
        raise RuleViolation("due_at must lie in the future", field="due_at")


@dataclass
class RaisedItem:
    item_id: str
    department: str
    title: str
    details: str | None
    owner: str | None
    due_at: datetime
    account_id: str
    account_name: str
    source: RaisedSource
    raised_by: str
    raised_at: datetime
    status: str = ActionItemStatus.OPEN.value
    assignee: str | None = None
    history: list[RaisedStep] = field(default_factory=list)
    updated_at: datetime | None = None
    closed_at: datetime | None = None
    reason: str | None = None
    escalated_at: datetime | None = None
    escalated_to: str | None = None

    @classmethod
    def raise_for(
        cls, ask: Raise, account: Account, *, item_id: str, ticket_account: str | None, by: str, now: datetime
    ) -> RaisedItem:
        """The item for ``account``; a ticket named as its source must be one of the account's
        tickets (``ticket_account``: the account of the ticket with the source's id, if any)."""
        require_future(ask.due_at, now)
        if ask.source.kind == SourceKind.TICKET and ticket_account != account.account_id:
            raise RuleViolation(
                f"ticket {ask.source.record_id} is not a ticket of account {account.account_id}",
                field="source.record_id",
            )
        return cls(
            item_id=item_id,
            department=ask.department,
            title=ask.title.strip(),
            details=ask.details,
            owner=ask.owner,
            due_at=ask.due_at,
            account_id=account.account_id,
            account_name=account.name,
            source=ask.source,
            raised_by=by,
            raised_at=now,
            assignee=ask.owner,
        )

    @property
    def kept_here(self) -> bool:
        """Customer success' own items go straight into its own queue (no handoff)."""
        return self.department == CUSTOMER_SUCCESS

    def raised(self) -> Event:
        """``action_item.raised_for_<department>``: the handoff (or, for customer success, the record)."""
        return RAISED_BY_DEPARTMENT[self.department](
            item_id=self.item_id,
            department=OwningDepartment(self.department),
            title=self.title,
            details=self.details,
            owner=self.owner,
            due_at=self.due_at,
            account_id=self.account_id,
            account_name=self.account_name,
            source=SourceRecord(
                kind=SourceKind(self.source.kind),
                record_id=self.source.record_id,
                excerpt=self.source.excerpt,
            ),
            raised_by=self.raised_by,
            raised_at=self.raised_at,
        )

    def record(self, step: RaisedStep) -> None:
        """Keep one step: the history sorted by time; an escalation marks the item once; any other
        step moves status and assignee unless a later step was recorded already."""
        self.history = sorted([*self.history, step], key=lambda s: s.at)
        if step.status == ActionItemStatus.ESCALATED:
            if self.escalated_at is None:
                self.escalated_at, self.escalated_to = step.at, step.escalated_to
            return
        if self.updated_at is not None and self.updated_at > step.at:
            return
        self.status, self.assignee, self.updated_at = step.status, step.assignee, step.at
        if step.status in CLOSING:
            self.closed_at, self.reason = step.at, step.reason
