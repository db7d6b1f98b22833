"""What sales' handlers need from storage: one small interface per aggregate, and the unit they work in.

``store.py`` implements these over MongoDB (inside the handler's transaction),
``fakes.py`` in memory (unit tests). Handlers see only these Protocols.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable, Sequence
from datetime import datetime
from typing import Protocol

from crm_contracts import Event
from crm_platform.errors import Conflict
from crm_platform.imports.handlers import ImportRepository
from crm_platform.uow import UnitOfWork

from sales.domain.account import Account
from sales.domain.assignment import Rep
from sales.domain.contact import Contact
from sales.domain.inbox import InboxItem
from sales.domain.opportunity import Activity, Opportunity
from sales.domain.pipeline import Pipeline
from sales.domain.review import ReviewPolicy


class DuplicateOpportunity(Conflict):
    """An opportunity for this inbox item or signal exists already (the unique indexes say so)."""


class DuplicateAccount(Conflict):
    """An account with this name exists already (one per name, trimmed and case-folded)."""


class DuplicateContact(Conflict):
    """A contact with this email exists already (one per email, as marketing's capture)."""


class AccountRepository(Protocol):
    async def get(self, account_id: str) -> Account | None: ...

    async def add(self, account: Account) -> None:
        """Raises :class:`DuplicateAccount` for a second account of the same name."""


class ContactRepository(Protocol):
    async def get_many(self, contact_ids: list[str]) -> list[Contact]:
        """The contacts of these ids that exist, in the order asked."""

    async def by_emails(self, emails: list[str]) -> dict[str, Contact]:
        """The known contacts of these emails (``email_key``-normalised), by email."""

    async def add(self, contact: Contact) -> None:
        """Raises :class:`DuplicateContact` for a second contact with the same email."""

    async def save(self, contact: Contact) -> None: ...

    async def add_many(self, contacts: Sequence[Contact]) -> None:
        """Contacts an import created (their emails checked against the stored ones first)."""


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

    def turn_ahead(self) -> Awaitable[int] | None:
        """The next turn, its round trip started now, beside the transaction's own reads (None
        where turns are not taken one at a time: a consumer's batch reserves them together)."""

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

    @property
    def accounts(self) -> AccountRepository: ...

    @property
    def contacts(self) -> ContactRepository: ...

    @property
    def imports(self) -> ImportRepository:
        """Contact imports (``crm_platform.imports``): the jobs, their error reports, mappings."""

    def emit(self, event: Event, *, correlation_id: str | None = None) -> None: ...

    def emit_all(self, events: Iterable[Event], *, correlation_id: str | None = None) -> None: ...


SalesUoW = UnitOfWork[SalesUnit]
