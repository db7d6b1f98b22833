"""In-memory implementations of ``repository.py`` for unit tests: no broker, no database.

Entities are copied on the way in and out, so a handler that changes an entity and
forgets to save it changes nothing here either. Use with
``crm_platform.uow.FakeUnitOfWork(FakeSalesUnit())``, which undoes a failed ``work``.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Sequence
from datetime import datetime
from typing import TypeVar

from crm_platform.imports.fakes import InMemoryImports
from crm_platform.roster import rotation
from crm_platform.uow import FakeUnit

from sales.domain.account import Account
from sales.domain.assignment import Rep
from sales.domain.contact import Contact
from sales.domain.contact_imports import ContactImportJob
from sales.domain.inbox import DEFAULT_SLA_MINUTES, InboxItem, InboxStatus
from sales.domain.opportunity import Activity, Opportunity
from sales.domain.pipeline import DEFAULT_PIPELINE, Pipeline
from sales.domain.review import ReviewPolicy
from sales.repository import DuplicateAccount, DuplicateContact, DuplicateOpportunity

E = TypeVar("E")


def _copy(entity: E) -> E:
    return copy.deepcopy(entity)


class FakeInboxRepository:
    def __init__(self) -> None:
        self.items: dict[str, InboxItem] = {}

    def _for_lead(self, lead_id: str) -> list[InboxItem]:
        return sorted(
            (i for i in self.items.values() if i.lead_id == lead_id),
            key=lambda i: (i.received_at, i.id),
            reverse=True,
        )

    async def latest_for_lead(self, lead_id: str) -> InboxItem | None:
        items = self._for_lead(lead_id)
        return _copy(items[0]) if items else None

    async def pending_for_lead(self, lead_id: str) -> InboxItem | None:
        pending = [i for i in self._for_lead(lead_id) if i.status == InboxStatus.PENDING]
        return _copy(pending[0]) if pending else None

    async def count_for_lead(self, lead_id: str) -> int:
        return len(self._for_lead(lead_id))

    async def add(self, item: InboxItem) -> None:
        if item.id in self.items:
            raise KeyError(f"inbox item {item.id} exists")
        self.items[item.id] = _copy(item)

    async def save(self, item: InboxItem) -> None:
        if item.id not in self.items:
            raise KeyError(f"inbox item {item.id} was never added")
        self.items[item.id] = _copy(item)


class FakeOpportunityRepository:
    def __init__(self) -> None:
        self.opportunities: dict[str, Opportunity] = {}
        self.activities: dict[str, Activity] = {}

    async def get(self, opportunity_id: str) -> Opportunity | None:
        found = self.opportunities.get(opportunity_id)
        return _copy(found) if found else None

    async def for_signal(self, signal_id: str) -> Opportunity | None:
        found = [o for o in self.opportunities.values() if o.signal_id == signal_id]
        return _copy(found[0]) if found else None

    async def add(self, opportunity: Opportunity) -> None:
        for other in self.opportunities.values():
            same_item = (
                opportunity.inbox_item_id is not None and other.inbox_item_id == opportunity.inbox_item_id
            )
            same_signal = opportunity.signal_id is not None and other.signal_id == opportunity.signal_id
            if same_item or same_signal or other.id == opportunity.id:
                raise DuplicateOpportunity("an opportunity for this inbox item or signal exists already")
        self.opportunities[opportunity.id] = _copy(opportunity)

    async def save(self, opportunity: Opportunity) -> None:
        if opportunity.id not in self.opportunities:
            raise KeyError(f"opportunity {opportunity.id} was never added")
        self.opportunities[opportunity.id] = _copy(opportunity)

    async def add_activity(self, activity: Activity) -> None:
        self.activities[activity.id] = activity

    async def count_in_stages(self, stages: list[str]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for o in self.opportunities.values():
            if o.stage in stages:
                counts[o.stage] = counts.get(o.stage, 0) + 1
        return counts


class FakeAccountRepository:
    def __init__(self) -> None:
        self.accounts: dict[str, Account] = {}

    async def get(self, account_id: str) -> Account | None:
        found = self.accounts.get(account_id)
        return _copy(found) if found else None

    async def add(self, account: Account) -> None:
        if any(a.key == account.key or a.id == account.id for a in self.accounts.values()):
            raise DuplicateAccount(f"an account named {account.name!r} exists already")
        self.accounts[account.id] = _copy(account)


class FakeContactRepository:
    def __init__(self) -> None:
        self.contacts: dict[str, Contact] = {}

    async def get_many(self, contact_ids: list[str]) -> list[Contact]:
        return [_copy(self.contacts[i]) for i in contact_ids if i in self.contacts]

    async def by_emails(self, emails: list[str]) -> dict[str, Contact]:
        wanted = set(emails)
        return {c.email: _copy(c) for c in self.contacts.values() if c.email in wanted}

    async def add(self, contact: Contact) -> None:
        if any(c.email == contact.email or c.id == contact.id for c in self.contacts.values()):
            raise DuplicateContact(f"a contact with email {contact.email!r} exists already")
        self.contacts[contact.id] = _copy(contact)

    async def add_many(self, contacts: Sequence[Contact]) -> None:
        for contact in contacts:
            await self.add(contact)

    async def save(self, contact: Contact) -> None:
        if contact.id not in self.contacts:
            raise KeyError(f"contact {contact.id} was never added")
        self.contacts[contact.id] = _copy(contact)


class _Turns:
    """The round-robin counter. Like MongoDB's, it lives outside the transaction: a ``work``
    that fails keeps the turns it took (``FakeUnitOfWork`` restores everything else)."""

    def __init__(self) -> None:
        self.value = 0

    def __deepcopy__(self, memo: dict[int, object]) -> _Turns:
        return self


class FakeTeamRepository:
    def __init__(self, reps: list[Rep] | None = None, *, sla_minutes: int = DEFAULT_SLA_MINUTES) -> None:
        self.reps: dict[str, Rep] = {r.user_id: r for r in reps or []}
        self.turns = _Turns()
        self.sla = sla_minutes
        self.current_pipeline: Pipeline = DEFAULT_PIPELINE
        self.policy = ReviewPolicy()
        self.changes: list[tuple[str, str, datetime]] = []

    async def active_rep_ids(self) -> list[str]:
        return rotation(r.user_id for r in self.reps.values() if r.active)

    async def take_turn(self) -> int:
        turn, self.turns.value = self.turns.value, self.turns.value + 1
        return turn

    def turn_ahead(self) -> Awaitable[int] | None:
        return asyncio.ensure_future(self.take_turn())

    async def replace_reps(self, reps: list[Rep]) -> None:
        self.reps = {r.user_id: r for r in reps}

    async def save_rep(self, rep: Rep) -> Rep:
        stored = self.reps.get(rep.user_id)
        name = rep.name if rep.name is not None or stored is None else stored.name
        self.reps[rep.user_id] = Rep(rep.user_id, rep.active, name, rep.updated_at, rep.updated_by)
        return self.reps[rep.user_id]

    async def sla_minutes(self) -> int:
        return self.sla

    async def save_sla(self, minutes: int, by: str, now: datetime) -> None:
        self.sla = minutes
        self.changes.append(("sla", by, now))

    async def pipeline(self) -> Pipeline:
        return self.current_pipeline

    async def save_pipeline(self, pipeline: Pipeline, by: str, now: datetime) -> None:
        self.current_pipeline = pipeline
        self.changes.append(("pipeline", by, now))

    async def review_policy(self) -> ReviewPolicy:
        return self.policy

    async def save_review_policy(self, policy: ReviewPolicy, by: str, now: datetime) -> None:
        self.policy = policy
        self.changes.append(("review_policy", by, now))


class FakeSalesUnit(FakeUnit):
    """``repository.SalesUnit`` in memory; emitted events are in ``events`` (``emitted(type)``)."""

    def __init__(self, reps: list[Rep] | None = None) -> None:
        super().__init__()
        self.inbox = FakeInboxRepository()
        self.opportunities = FakeOpportunityRepository()
        self.team = FakeTeamRepository(reps)
        self.accounts = FakeAccountRepository()
        self.contacts = FakeContactRepository()
        self.imports: InMemoryImports[ContactImportJob] = InMemoryImports()
