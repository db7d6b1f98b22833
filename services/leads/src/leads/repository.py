"""What marketing's handlers need from storage: one small interface per aggregate, and the unit.

``store.py`` implements these over MongoDB (inside the unit of work's transaction),
``fakes.py`` in memory for unit tests. Listings for the API are read-side queries in
``store.py`` and do not go through a repository.
"""

from __future__ import annotations

from collections.abc import Awaitable, Collection, Iterable, Sequence
from datetime import datetime
from typing import Protocol, TypeVar

from crm_contracts import Event
from crm_platform.actor import Actor

from leads.domain.imports import Checkpoint, Counts, ImportJob, Rejection
from leads.domain.leads import BehaviourRecord, Lead, VerdictRecord
from leads.domain.scoring import ScoringRules

T = TypeVar("T")


class LeadRepository(Protocol):
    async def get(self, lead_id: str) -> Lead | None: ...

    async def get_by_email(self, email: str) -> Lead | None: ...

    async def add(self, lead: Lead) -> None:
        """Raises ``DuplicateKeyError`` when a lead with this email exists (a concurrent capture)."""

    async def add_unless_email_known(self, lead: Lead) -> Lead | None:
        """Insert ``lead`` unless a lead with its email is stored: that lead, unchanged (then
        nothing was written), or None (``lead`` was inserted). One round trip: a capture's
        dedupe lookup and insert together."""

    async def save(self, lead: Lead) -> None: ...

    async def assign_if_qualified(self, lead_id: str, rep: str, assigned_at: datetime) -> bool:
        """``Lead.assign`` written without reading the lead first, for a qualified lead: True
        when it is assigned now; False when that could not be done so (the caller reads it)."""

    async def get_many(self, lead_ids: Collection[str]) -> dict[str, Lead]:
        """The stored leads among ``lead_ids``, by id: one round trip."""

    async def get_many_by_email(self, emails: Collection[str]) -> dict[str, Lead]:
        """The stored leads with these (normalized) emails, by email: one round trip."""

    async def add_many(self, leads: Sequence[Lead]) -> None:
        """:meth:`add` for many; ``DuplicateKeyError`` if any email exists (nothing added)."""

    async def save_many(self, leads: Sequence[Lead]) -> None: ...


class BehaviourRepository(Protocol):
    async def by_external_id(self, lead_id: str, external_id: str) -> BehaviourRecord | None: ...

    async def by_external_ids(
        self, pairs: Collection[tuple[str, str]]
    ) -> dict[tuple[str, str], BehaviourRecord]:
        """The stored records of these ``(lead id, external_id)`` pairs: one round trip."""

    async def add_many(self, records: Sequence[BehaviourRecord]) -> None:
        """:meth:`add` for many; ``DuplicateKeyError`` if any pair is recorded (nothing added)."""

    async def add(self, record: BehaviourRecord) -> None:
        """Raises ``DuplicateKeyError`` when the lead's ``external_id`` is recorded (a concurrent retry)."""


class ScoringRulesRepository(Protocol):
    async def current(self, *, fresh: bool = False) -> ScoringRules:
        """The newest version; ``fresh`` reads past the process's cache (crm_platform.cache)."""

    async def add(self, rules: ScoringRules) -> None:
        """Raises ``DuplicateKeyError`` when that version exists (changed at the same moment)."""


class VerdictRepository(Protocol):
    async def add(self, record: VerdictRecord) -> None: ...


class ImportRepository(Protocol):
    async def get(self, job_id: str) -> ImportJob | None: ...

    async def add(self, job: ImportJob) -> None: ...

    async def save(self, job: ImportJob) -> None: ...

    async def add_rejections(self, rejections: Sequence[Rejection]) -> None:
        """The rows of one batch the import rejected (its error report grows with the batch)."""

    async def add_batch(self, job_id: str, at: Checkpoint, to: Checkpoint, counts: Counts) -> None:
        """The batch from ``at`` to ``to`` is stored (its record; ``StaleCheckpoint`` when a batch
        from ``at`` is stored already): the worker folds it into the job's checkpoint."""

    async def save_mapping(self, name: str, columns: dict[str, str], by: Actor, at: datetime) -> None:
        """A saved column mapping (file column -> lead field), replacing one of that name."""


class LeadsUnit(Protocol):
    """What a handler works in: the repositories and ``emit``, committed together."""

    def emit(self, event: Event, *, correlation_id: str | None = None, batched: bool = False) -> None: ...

    def emit_all(
        self, events: Iterable[Event], *, correlation_id: str | None = None, batched: bool = False
    ) -> None:
        """``batched``: a bulk path's events share outbox rows (crm_platform.mongo.Tx.emit)."""

    async def keys_beside(self, write: Awaitable[T], events: Iterable[Event]) -> T:
        """``write``, and beside it the person keys ``events`` (emitted next) are sealed with:
        not a round trip after the emit (crm_platform.uow.MongoUnit.keys_beside)."""

    @property
    def leads(self) -> LeadRepository: ...

    @property
    def behaviours(self) -> BehaviourRepository: ...

    @property
    def rules(self) -> ScoringRulesRepository: ...

    @property
    def verdicts(self) -> VerdictRepository: ...

    @property
    def imports(self) -> ImportRepository: ...
