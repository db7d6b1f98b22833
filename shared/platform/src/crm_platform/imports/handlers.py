"""An import's own commands (create, upload, end, save a mapping), shared by every department.

Each runs in the department's unit of work, whose unit has an ``imports`` repository
(:class:`ImportRepository`; ``crm_platform.imports.store.MongoImports`` in production): the
job's changes are audited like any record's. A department's batch handler (its records, its
events) stays the department's (``leads.handlers.import_batch``, ``sales.handlers.import_contacts``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar

from crm_platform.actor import Actor
from crm_platform.clock import now_millis
from crm_platform.errors import Conflict, NotFound
from crm_platform.imports.domain import (
    Checkpoint,
    Counts,
    ImportFormat,
    ImportJob,
    NotAcceptingFile,
    Rejection,
)
from crm_platform.uow import UnitOfWork

J = TypeVar("J", bound=ImportJob[Any])


class ImportRepository(Protocol):
    async def get(self, job_id: str) -> Any: ...

    async def add(self, job: Any) -> None: ...

    async def save(self, job: Any) -> None: ...

    async def add_rejections(self, rejections: Sequence[Rejection]) -> None:
        """The rows of one batch the import rejected (its error report grows with the batch)."""

    async def add_batch(self, job_id: str, at: Checkpoint, to: Checkpoint, counts: Counts) -> None:
        """A department whose batches run two at a time stores each batch's record instead of
        saving the job (``StaleCheckpoint`` when a batch from ``at`` is stored already)."""

    async def save_mapping(self, name: str, columns: dict[str, str], by: Actor, at: datetime) -> None:
        """A saved column mapping (file column -> field), replacing one of that name."""


class ImportsUnit(Protocol):
    @property
    def imports(self) -> ImportRepository: ...


Uow = UnitOfWork[Any]


async def load(unit: ImportsUnit, job_id: str) -> Any:
    job = await unit.imports.get(job_id)
    if job is None:
        raise NotFound(f"no import '{job_id}'", import_id=job_id)
    return job


async def create_import(
    uow: Uow,
    job_type: type[J],
    fmt: ImportFormat,
    mapping: Mapping[str, str] | None,
    defaults: Any,
    *,
    actor: Actor,
    mapping_name: str | None = None,
) -> J:
    """A new import, waiting for its file (``mapping`` None: the default mapping from the header)."""

    async def work(unit: ImportsUnit) -> J:
        now = now_millis(uow.clock)
        checked = job_type.checked_mapping(mapping) if mapping is not None else None
        job = job_type(
            id=uow.new_id(),
            format=fmt,
            mapping=checked,
            mapping_name=mapping_name,
            defaults=defaults,
            created_by=actor.user_id,
            created_by_name=actor.display_name,
            created_at=now,
            updated_at=now,
        )
        await unit.imports.add(job)
        return job

    result: J = await uow.run(work)
    return result


async def save_mapping(
    uow: Uow, job_type: type[ImportJob[Any]], name: str, columns: Mapping[str, str], *, actor: Actor
) -> dict[str, str]:
    """Store a column mapping under ``name`` (replacing one of that name)."""
    checked = job_type.checked_mapping(columns)

    async def work(unit: ImportsUnit) -> None:
        await unit.imports.save_mapping(name, checked, actor, now_millis(uow.clock))

    await uow.run(work)
    return checked


async def begin_upload(uow: Uow, job_id: str, file_name: str | None) -> Any:
    async def work(unit: ImportsUnit) -> Any:
        job = await load(unit, job_id)
        try:
            started = job.start_upload(file_name, now_millis(uow.clock))
        except NotAcceptingFile as exc:
            raise Conflict(str(exc), import_id=job_id) from None
        await unit.imports.save(started)
        return started

    return await uow.run(work)


async def finish_upload(uow: Uow, job_id: str, size: int, header: Sequence[str], data_start: int) -> Any:
    """The file is stored whole: the job is queued for a worker."""

    async def work(unit: ImportsUnit) -> Any:
        job = (await load(unit, job_id)).uploaded(size, header, data_start, now_millis(uow.clock))
        await unit.imports.save(job)
        return job

    return await uow.run(work)


async def end_import(uow: Uow, job_id: str, failure: str | None = None) -> Any:
    """The last batch is in (``failure`` None) or the file cannot be imported (why)."""

    async def work(unit: ImportsUnit) -> Any:
        job = await load(unit, job_id)
        now = now_millis(uow.clock)
        ended = job.complete(now) if failure is None else job.fail(failure, now)
        await unit.imports.save(ended)
        return ended

    return await uow.run(work)
