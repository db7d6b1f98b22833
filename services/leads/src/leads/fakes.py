"""In-memory implementations of marketing's repositories and unit, for unit tests only.

Entities are kept as stored (a ``get`` returns what the last ``add``/``save`` put
there), and the unique keys the Mongo indexes enforce raise ``DuplicateKeyError``
here too, so the handlers' race handling runs in unit tests.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import UTC, datetime
from typing import TypeVar

from crm_platform.clock import ManualClock
from crm_platform.imports import fakes as platform_fakes
from crm_platform.uow import FakeUnit, FakeUnitOfWork
from pymongo.errors import DuplicateKeyError

from leads.domain.imports import ImportJob
from leads.domain.leads import BehaviourRecord, Lead, LeadStatus, VerdictRecord
from leads.domain.scoring import DEFAULT_RULES, ScoringRules

T = TypeVar("T")


class InMemoryLeads:
    def __init__(self) -> None:
        self.items: dict[str, Lead] = {}

    async def get(self, lead_id: str) -> Lead | None:
        return self.items.get(lead_id)

    async def get_by_email(self, email: str) -> Lead | None:
        return next((lead for lead in self.items.values() if lead.email == email), None)

    async def add(self, lead: Lead) -> None:
        if lead.id in self.items or await self.get_by_email(lead.email) is not None:
            raise DuplicateKeyError(f"lead {lead.email!r} exists")
        self.items[lead.id] = lead

    async def add_unless_email_known(self, lead: Lead) -> Lead | None:
        known = await self.get_by_email(lead.email)
        if known is None:
            await self.add(lead)
        return known

    async def save(self, lead: Lead) -> None:
        self.items[lead.id] = lead

    async def assign_if_qualified(self, lead_id: str, rep: str, assigned_at: datetime) -> bool:
        lead = self.items.get(lead_id)
        if lead is None or lead.status != LeadStatus.QUALIFIED:
            return False
        assigned = lead.assign(rep, assigned_at)
        if assigned is not None:
            self.items[lead_id] = assigned
        return assigned is not None

    async def get_many(self, lead_ids: Collection[str]) -> dict[str, Lead]:
        return {i: self.items[i] for i in lead_ids if i in self.items}

    async def get_many_by_email(self, emails: Collection[str]) -> dict[str, Lead]:
        return {lead.email: lead for lead in self.items.values() if lead.email in emails}

    async def add_many(self, leads: Sequence[Lead]) -> None:
        emails = [lead.email for lead in leads]
        taken = {lead.email for lead in self.items.values()}
        if len(set(emails)) < len(emails) or taken & set(emails):
            raise DuplicateKeyError("a lead with one of these emails exists")
        self.items.update((lead.id, lead) for lead in leads)

    async def save_many(self, leads: Sequence[Lead]) -> None:
        self.items.update((lead.id, lead) for lead in leads)


class InMemoryBehaviours:
    def __init__(self) -> None:
        self.items: dict[str, BehaviourRecord] = {}

    async def by_external_id(self, lead_id: str, external_id: str) -> BehaviourRecord | None:
        return next(
            (r for r in self.items.values() if r.lead_id == lead_id and r.external_id == external_id), None
        )

    async def by_external_ids(
        self, pairs: Collection[tuple[str, str]]
    ) -> dict[tuple[str, str], BehaviourRecord]:
        return {
            (r.lead_id, r.external_id): r
            for r in self.items.values()
            if r.external_id is not None and (r.lead_id, r.external_id) in pairs
        }

    async def add(self, record: BehaviourRecord) -> None:
        if record.external_id is not None and await self.by_external_id(record.lead_id, record.external_id):
            raise DuplicateKeyError(f"behaviour {record.external_id!r} recorded")
        self.items[record.id] = record

    async def add_many(self, records: Sequence[BehaviourRecord]) -> None:
        pairs = [(r.lead_id, r.external_id) for r in records if r.external_id is not None]
        if len(set(pairs)) < len(pairs) or await self.by_external_ids(set(pairs)):
            raise DuplicateKeyError("one of these behaviours is recorded")
        self.items.update((r.id, r) for r in records)


class InMemoryScoringRules:
    def __init__(self) -> None:
        self.versions: dict[int, ScoringRules] = {DEFAULT_RULES.version: DEFAULT_RULES}

    async def current(self, *, fresh: bool = False) -> ScoringRules:
        return self.versions[max(self.versions)]

    async def add(self, rules: ScoringRules) -> None:
        if rules.version in self.versions:
            raise DuplicateKeyError(f"rules version {rules.version} exists")
        self.versions[rules.version] = rules


class InMemoryVerdicts:
    def __init__(self) -> None:
        self.items: dict[str, VerdictRecord] = {}

    async def add(self, record: VerdictRecord) -> None:
        self.items[record.id] = record


class InMemoryImports(platform_fakes.InMemoryImports[ImportJob]):
    pass


class FakeLeadsUnit(FakeUnit):
    def __init__(self) -> None:
        super().__init__()
        self.leads = InMemoryLeads()
        self.behaviours = InMemoryBehaviours()
        self.rules = InMemoryScoringRules()
        self.verdicts = InMemoryVerdicts()
        self.imports = InMemoryImports()


class HeldFirst:
    """A unit of work on :class:`FakeLeadsUnit` whose first ``run`` (counted from ``runs = 0``)
    waits for ``release`` while ``held``: a transaction in flight, for the group commits' tests."""

    def __init__(self, *, held: bool = True) -> None:
        ids = (f"id-{n}" for n in itertools.count(1))
        self.inner = FakeUnitOfWork(
            FakeLeadsUnit(), clock=ManualClock(datetime(2026, 3, 1, tzinfo=UTC)), new_id=lambda: next(ids)
        )
        self.clock, self.new_id = self.inner.clock, self.inner.new_id
        self.release = asyncio.Event()
        self.held = held
        self.runs = 0

    async def run(self, work: Callable[[FakeLeadsUnit], Awaitable[T]]) -> T:
        self.runs += 1
        if self.held and self.runs == 1:
            await self.release.wait()
        return await self.inner.run(work)


async def until(condition: Callable[[], bool]) -> None:
    """Return once ``condition`` holds, polled once per turn of the event loop (no clock)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("never happened")
