"""Sales' side of a contact import: a record becomes a contact row by ``POST /contacts``' rules.

The machinery (claiming jobs under a lease, reading the stored file from the checkpoint one
batch ahead, the retry limit, storing an upload) is the platform's
(``crm_platform.imports.worker``, shared with marketing's lead imports). Here: each record
through the contact route's field rules (:class:`ContactRowIn`: the same email, name, phone
and role types as ``ContactIn``), and each batch handed to ``handlers.import_contacts`` (one
transaction: contacts deduplicated by email, their events, the rejected rows, the checkpoint).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from crm_platform.imports import handlers as import_jobs
from crm_platform.imports import worker as platform_worker
from crm_platform.imports.domain import Checkpoint, RawRecord, Rejection
from crm_platform.imports.worker import mapped_cells, sort_records, validation_reasons
from pydantic import ValidationError
from pymongo.asynchronous.database import AsyncDatabase

from sales import handlers, metrics, store
from sales.api.models import ContactRowIn
from sales.domain.contact_imports import ContactImportJob, ContactRow
from sales.repository import SalesUoW


def row_contact(
    values: Mapping[str, object], mapping: Mapping[str, str]
) -> tuple[ContactRow | None, str | None]:
    """One record as a contact row by the contact route's rules, or why the row is rejected."""
    body: dict[str, Any] = {}
    for target, value in mapped_cells(values, mapping):
        if not isinstance(value, str):
            return None, f"{target}: expected text, got {type(value).__name__}"
        body[target] = value
    try:
        row = ContactRowIn.model_validate(body)
    except ValidationError as exc:
        return None, validation_reasons(exc)
    return ContactRow(str(row.email), row.name, row.phone, row.role), None


class ContactImportWorker(platform_worker.ImportWorker[ContactImportJob, ContactRow]):
    """The sales process's contact import worker (``runtime.background``): one import at a time."""

    def __init__(self, uow: SalesUoW, db: AsyncDatabase[dict[str, Any]], **limits: Any) -> None:
        super().__init__(db, store.CONTACT_IMPORTS, uow.clock, **limits)
        self.uow = uow

    def sort_rows(
        self, job: ContactImportJob, records: Sequence[RawRecord]
    ) -> tuple[list[ContactRow], list[Rejection]]:
        return sort_records(job, records, row_contact)

    async def import_batch(
        self,
        job: ContactImportJob,
        at: Checkpoint,
        to: Checkpoint,
        rows: list[ContactRow],
        rejected: list[Rejection],
    ) -> None:
        await handlers.import_contacts(self.uow, job.id, at, to, rows, rejected)
        metrics.observe_contact_import(len(rows), len(rejected))

    async def end_import(self, job_id: str, failure: str | None = None) -> ContactImportJob:
        job: ContactImportJob = await import_jobs.end_import(self.uow, job_id, failure)
        return job
