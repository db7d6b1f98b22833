"""What sales' handlers need from storage: one small interface per aggregate, and the unit they work in.

``store.py`` implements these over MongoDB (inside the handler's transaction),
``fakes.py`` in memory (unit tests). Handlers see only these Protocols.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Protocol

from crm_contracts import Event
from crm_platform.errors import Conflict
from crm_platform.uow import UnitOfWork

from sales.domain.assignment import Rep
from sales.domain.inbox import InboxItem
from sales.domain.opportunity import Activity, Opportunity
from sales.domain.pipeline import Pipeline
from sales.domain.review import ReviewPolicy


class DuplicateOpportunity(Conflict):
    """An opportunity for this inbox item or signal exists already (the unique indexes say so)."""


class InboxRepository(Protocol):
    async def latest_for_lead(self, lead_id: str) -> InboxItem | None:
        """The lead's current item: its most recent handoff."""

    async def pending_for_lead(self, lead_id: str) -> InboxItem | None: ...

    async def count_for_lead(self, lead_id: str) -> int: ...

    async def add(self, item: InboxItem) -> None: ...

    async def save(self, item: InboxItem) -> None: ...


class OpportunityRepository(Protocol):
    async def get(self, opportunity_id: str) -> Opportunity | None: ...

    async def for_signal(self, signal_id: str) -> Opportunity | None: ...

    async def add(self, opportunity: Opportunity) -> None:
        """Raises :class:`DuplicateOpportunity` for a second one per inbox item or signal."""

    async def save(self, opportunity: Opportunity) -> None: ...

    async def add_activity(self, activity: Activity) -> None: ...

    async def count_in_stages(self, stages: list[str]) -> dict[str, int]: ...


class TeamRepository(Protocol):
    """The rep roster, the round-robin turn counter, the SLA, the pipeline and the review policy."""

    async def active_rep_ids(self) -> list[str]: ...

    async def take_turn(self) -> int:
        """The next round-robin turn (taken outside the transaction: ``crm_platform.counters``)."""

    async def replace_reps(self, reps: list[Rep]) -> None: ...

    async def save_rep(self, rep: Rep) -> Rep:
        """Add or change one rep; a ``name`` of None keeps the display name already stored."""

    async def sla_minutes(self) -> int: ...

    async def save_sla(self, minutes: int, by: str, now: datetime) -> None: ...

    async def pipeline(self) -> Pipeline: ...

    async def save_pipeline(self, pipeline: Pipeline, by: str, now: datetime) -> None: ...

    async def review_policy(self) -> ReviewPolicy:
        """When a deal needs customer success' commitment review before the win."""

    async def save_review_policy(self, policy: ReviewPolicy, by: str, now: datetime) -> None: ...


class SalesUnit(Protocol):
    """What a handler works with inside one transaction: the repositories and the outbox."""

    @property
    def inbox(self) -> InboxRepository: ...

    @property
    def opportunities(self) -> OpportunityRepository: ...

    @property
    def team(self) -> TeamRepository: ...

    def emit(self, event: Event, *, correlation_id: str | None = None) -> None: ...

    def emit_all(self, events: Iterable[Event], *, correlation_id: str | None = None) -> None: ...


SalesUoW = UnitOfWork[SalesUnit]
