"""An erasure request ("right to be forgotten", issue 9) and how the departments' confirmations
fold into it.

An administrator names the person by e-mail (and/or record ids); the gateway keeps only the
keyed hash of the normalised e-mail (``crm_platform.pseudonym.email_hash``), never the e-mail:
the request outlives the person's data and must not be a copy of it. Every department of
:data:`crm_contracts.events.governance.ERASURE_DEPARTMENTS` erases the person in its own
database; one that stores people first says ``erasure.erased`` (what it erased, when its
recheck is due: a late writer's record is erased then) and confirms with ``erasure.completed``
after that recheck, both passes counted (analytics, and a department of an older release,
confirm at once). The request is ``completed`` once every department confirmed. A department's
first event of each kind counts; a later copy (a re-sent event) changes nothing.
Pure: no I/O, time and ids passed in.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from crm_contracts.events.governance import (
    ERASURE_DEPARTMENTS,
    ErasureCompletedV1,
    ErasureErasedV1,
    ErasureRequestedV1,
)
from crm_platform.errors import RuleViolation


class ErasureState(StrEnum):
    PENDING = "pending"
    COMPLETED = "completed"


class DepartmentState(StrEnum):
    PENDING = "pending"  # nothing heard yet
    ERASED = "erased"  # the first pass committed, its recheck not yet run
    CONFIRMED = "confirmed"  # erasure.completed: the recheck ran (or none was needed)


@dataclass(frozen=True)
class FirstPass:
    """One department's first pass (``erasure.erased``): what it erased, and when its recheck is
    due (the confirmation follows it)."""

    department: str
    records_erased: int
    audit_entries_rewritten: int
    duration_ms: int
    erased_at: datetime
    recheck_due_at: datetime
    event_id: str


@dataclass(frozen=True)
class Confirmation:
    """One department's confirmation: what it erased and how long after the request."""

    department: str
    records_erased: int
    audit_entries_rewritten: int
    duration_ms: int
    completed_at: datetime
    event_id: str


@dataclass(frozen=True)
class ErasureRequest:
    id: str
    email_hash: str | None
    record_ids: tuple[str, ...]
    requested_by: str
    requested_at: datetime
    departments: tuple[str, ...] = ERASURE_DEPARTMENTS
    confirmations: tuple[Confirmation, ...] = field(default_factory=tuple)
    completed_at: datetime | None = None
    first_passes: tuple[FirstPass, ...] = field(default_factory=tuple)

    @classmethod
    def file(
        cls, request_id: str, email_hash: str | None, record_ids: list[str], by: str, now: datetime
    ) -> tuple[ErasureRequest, ErasureRequestedV1]:
        """A new request and the event every department acts on. The person must be named:
        by e-mail (its hash) or by at least one record id."""
        if email_hash is None and not record_ids:
            raise RuleViolation("name the person: give email or record_ids", field="body.email")
        request = cls(request_id, email_hash, tuple(dict.fromkeys(record_ids)), by, now)
        event = ErasureRequestedV1(
            request_id=request_id,
            email_hash=email_hash,
            record_ids=list(request.record_ids),
            requested_at=now,
        )
        return request, event

    @property
    def state(self) -> ErasureState:
        return ErasureState.COMPLETED if self.completed_at is not None else ErasureState.PENDING

    def confirmation(self, department: str) -> Confirmation | None:
        return next((c for c in self.confirmations if c.department == department), None)

    def first_pass(self, department: str) -> FirstPass | None:
        return next((f for f in self.first_passes if f.department == department), None)

    def department_state(self, department: str) -> DepartmentState:
        if self.confirmation(department) is not None:
            return DepartmentState.CONFIRMED
        return DepartmentState.PENDING if self.first_pass(department) is None else DepartmentState.ERASED

    def late_records(self, department: str) -> int | None:
        """The records ``department``'s recheck erased (a late writer's): its confirmation's count
        less its first pass's; None until both are known."""
        confirmed, first = self.confirmation(department), self.first_pass(department)
        if confirmed is None or first is None:
            return None
        return max(0, confirmed.records_erased - first.records_erased)

    @property
    def rechecks_due_by(self) -> datetime | None:
        """When the last recheck still awaited is due (None: none is)."""
        due = [f.recheck_due_at for f in self.first_passes if self.confirmation(f.department) is None]
        return max(due, default=None)

    def note_erased(self, event: ErasureErasedV1, event_id: str) -> ErasureRequest | None:
        """The request with ``event``'s first pass noted, or None when it already was (or the
        department is not one this request waits for): nothing to save. Noted after the
        department's confirmation too (a dead letter replayed late): the late records then show."""
        if event.department not in self.departments or self.first_pass(event.department) is not None:
            return None
        first = FirstPass(
            department=event.department,
            records_erased=event.records_erased,
            audit_entries_rewritten=event.audit_entries_rewritten,
            duration_ms=event.duration_ms,
            erased_at=event.erased_at,
            recheck_due_at=event.recheck_due_at,
            event_id=event_id,
        )
        return dataclasses.replace(self, first_passes=(*self.first_passes, first))

    def confirm(self, event: ErasureCompletedV1, event_id: str) -> ErasureRequest | None:
        """The request with ``event``'s department confirmed, or None when it already was (or the
        department is not one this request waits for): nothing to save."""
        if event.department not in self.departments or self.confirmation(event.department) is not None:
            return None
        confirmation = Confirmation(
            department=event.department,
            records_erased=event.records_erased,
            audit_entries_rewritten=event.audit_entries_rewritten,
            duration_ms=event.duration_ms,
            completed_at=event.completed_at,
            event_id=event_id,
        )
        confirmations = (*self.confirmations, confirmation)
        done = {c.department for c in confirmations} >= set(self.departments)
        completed = max(c.completed_at for c in confirmations) if done else None
        return dataclasses.replace(self, confirmations=confirmations, completed_at=completed)
