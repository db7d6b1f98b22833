"""The action item as an owning department sees it: pure rules, no I/O.

**Whose clock judges an item overdue.** Live, every change is made on the real clock and the
escalation job judges on it too. Under the demo clock (``make run``'s history) an item is made
and worked at the moments of a history played in minutes, while the job runs on the real time:
judged on the real clock, an item raised "last March" is overdue the instant it is stored and
was escalated whenever a round of the job fell between the history raising and closing it,
ahead of (and, newer in time, shadowing at customer success) the steps the history then took
in March. So each item keeps the clock its latest change was made on, as ``escalate_at``: its
due date moved by how far that clock lagged the real one (the due date itself when live). The
job escalates it once the real time passes ``escalate_at``, stamping the step at the item's own
time (:meth:`ActionItem.own_time`); and a step taken on the item after its due date with no
escalation yet (the job had not come round, or the history closes it late) is preceded by the
escalation at the due date, so a late item is always escalated before it is worked, on any clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from crm_platform.errors import Conflict, RuleViolation

SYSTEM = "system"  # who "acts" when an overdue item escalates by itself


class Status(StrEnum):
    OPEN = "open"
    ACCEPTED = "accepted"
    ASSIGNED = "assigned"
    DONE = "done"
    DECLINED = "declined"


CLOSED = frozenset({Status.DONE, Status.DECLINED})


class View(StrEnum):
    """The lists a department looks at."""

    OPEN = "open"  # not done or declined
    OVERDUE = "overdue"  # open and past its due date
    ESCALATED = "escalated"  # open and escalated to the department's manager
    CLOSED = "closed"  # done or declined


@dataclass(frozen=True)
class Step:
    """One change of an item, as its history keeps it and its outcome event carries it."""

    status: str  # a Status, or "escalated"
    by: str
    at: datetime
    assignee: str | None = None
    reason: str | None = None
    automatic: bool = False


@dataclass(frozen=True)
class ActionItem:
    item_id: str
    department: str
    title: str
    due_at: datetime
    account_id: str
    account_name: str
    source: dict[str, Any]
    raised_by: str
    raised_at: datetime
    received_at: datetime
    details: str | None = None
    status: Status = Status.OPEN
    assignee: str | None = None
    reason: str | None = None
    first_action_at: datetime | None = None
    closed_at: datetime | None = None
    escalated_at: datetime | None = None
    escalated_to: str | None = None
    journey_id: str | None = None  # the customer's journey (correlation id): outcomes continue it
    history: tuple[Step, ...] = field(default_factory=tuple)
    # The real time at which the escalation job finds it overdue (module docstring); None: stored
    # before this field, judged by its due date.
    escalate_at: datetime | None = None

    @property
    def is_open(self) -> bool:
        return self.status not in CLOSED

    def is_overdue(self, now: datetime) -> bool:
        return self.is_open and self.due_at < now

    def on_clock(self, lag: timedelta) -> ActionItem:
        """The item as changed on a clock ``lag`` behind the real one (zero when live)."""
        return replace(self, escalate_at=self.due_at + lag)

    def own_time(self, real_now: datetime) -> datetime:
        """``real_now`` on the clock the item's latest change was made on."""
        return real_now - (self.escalate_at - self.due_at if self.escalate_at is not None else timedelta(0))

    def due_for_escalation(self, real_now: datetime) -> bool:
        """Open, not escalated yet, and overdue on its own clock (what the job judges)."""
        return self.escalated_at is None and self.is_overdue(self.own_time(real_now))

    def escalated_before(self, to: str, now: datetime) -> ActionItem:
        """The item as it stood just before a step at ``now`` (its own clock): escalated at its
        due date first when it was overdue by then and had not been."""
        if self.escalated_at is not None or not self.is_overdue(now):
            return self
        last = self.history[-1].at if self.history else self.received_at
        return self.escalate(to, max(self.due_at, last))

    def in_view(self, view: View, now: datetime) -> bool:
        if view == View.CLOSED:
            return not self.is_open
        if view == View.OVERDUE:
            return self.is_overdue(now)
        if view == View.ESCALATED:
            return self.is_open and self.escalated_at is not None
        return self.is_open

    # -- what people do -------------------------------------------------------------------
    def accept(self, by: str, now: datetime) -> ActionItem:
        self._still_open("accept")
        if self.status != Status.OPEN:
            raise Conflict(f"action item {self.item_id} is already {self.status}", status=str(self.status))
        return self._step(Status.ACCEPTED, by, now, assignee=self.assignee)

    def assign(self, assignee: str, by: str, now: datetime) -> ActionItem:
        self._still_open("assign")
        if not assignee.strip():
            raise RuleViolation("assignee must name a user", field="assignee")
        return self._step(Status.ASSIGNED, by, now, assignee=assignee)

    def complete(self, by: str, now: datetime, note: str | None = None) -> ActionItem:
        self._still_open("complete")
        return self._step(Status.DONE, by, now, assignee=self.assignee or by, reason=note)

    def decline(self, by: str, reason: str, now: datetime) -> ActionItem:
        self._still_open("decline")
        if not reason.strip():
            raise RuleViolation("a declined action item needs a reason", field="reason")
        return self._step(Status.DECLINED, by, now, assignee=self.assignee, reason=reason)

    def escalate(self, to: str, now: datetime) -> ActionItem:
        """Overdue and not escalated yet: the department's manager gets it (automatic)."""
        if not self.is_open or self.due_at > now or self.escalated_at is not None:
            raise Conflict(f"action item {self.item_id} is not due for escalation")
        step = Step("escalated", SYSTEM, now, assignee=self.assignee, automatic=True)
        return replace(self, escalated_at=now, escalated_to=to, history=(*self.history, step))

    # -- internals ------------------------------------------------------------------------
    def _still_open(self, action: str) -> None:
        if not self.is_open:
            raise Conflict(
                f"cannot {action} action item {self.item_id}: it is {self.status}", status=str(self.status)
            )

    def _step(
        self, status: Status, by: str, now: datetime, *, assignee: str | None, reason: str | None = None
    ) -> ActionItem:
        step = Step(str(status), by, now, assignee=assignee, reason=reason)
        return replace(
            self,
            status=status,
            assignee=assignee,
            reason=reason if status in CLOSED else self.reason,
            first_action_at=self.first_action_at or now,
            closed_at=now if status in CLOSED else None,
            history=(*self.history, step),
        )

    @property
    def last_step(self) -> Step:
        return self.history[-1]
