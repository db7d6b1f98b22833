"""Marketing's side of an import: a record becomes a capture by ``POST /leads``' own rules.

The machinery (claiming jobs under a lease, reading the stored file from the checkpoint one
batch ahead, the retry limit, storing an upload) is the platform's
(``crm_platform.imports.worker``, shared with sales' contact imports). Here: each record
through the capture route's validation (``CaptureIn``), and each batch handed to
``handlers.import_batch`` (one transaction: leads merged by email like a capture, their
``lead.captured`` events, the rejected rows, the batch's record). Two batches' transactions
run at once (``CRM_IMPORT_IN_FLIGHT``) when they share no email (:meth:`ImportWorker.batch_keys`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from crm_contracts.email import normalized_email
from crm_platform.app import batch_heap
from crm_platform.custom_fields import CUSTOM_PREFIX, FieldSet, RecordType, row_reason
from crm_platform.custom_fields_api import CustomFieldRegistry
from crm_platform.errors import RuleViolation
from crm_platform.imports import worker as platform_worker
from crm_platform.imports.worker import (
    BadFile,
    LeaseLost,
    UploadTakenOver,
    flag,
    mapped_cells,
    sort_records,
    store_upload,
    validation_reasons,
)
from crm_platform.uow import UnitOfWork
from pydantic import ValidationError
from pydantic_core import PydanticCustomError
from pymongo.asynchronous.database import AsyncDatabase

from leads import handlers, metrics, store
from leads.api.models import CaptureIn
from leads.domain.imports import Checkpoint, Counts, ImportFormat, ImportJob, RawRecord, Rejection
from leads.domain.leads import NO_CUSTOM_FIELDS, Capture, normalize_email
from leads.repository import LeadsUnit

__all__ = [
    "BadFile",
    "ImportWorker",
    "LeaseLost",
    "UploadTakenOver",
    "row_capture",
    "sort_rows",
    "store_upload",
]


def row_capture(
    values: Mapping[str, object],
    mapping: Mapping[str, str],
    job: ImportJob,
    fields: FieldSet = NO_CUSTOM_FIELDS,
) -> tuple[Capture | None, str | None]:
    """One record's capture by the capture route's rules (its custom values checked against
    ``fields``, the lead's definitions), or why the row is rejected."""
    d = job.defaults
    body: dict[str, Any] = {"source_channel": d.source_channel, "campaign": d.campaign}
    consent = d.marketing_email
    custom: dict[str, object] = {}
    for target, value in mapped_cells(values, mapping):
        if target.startswith(CUSTOM_PREFIX):
            custom[target[len(CUSTOM_PREFIX) :]] = value
        elif target == "marketing_email":
            given = flag(value)
            if given is None:
                return None, f"marketing_email: {str(value)[:50]!r} is not true/false (yes/no, 1/0)"
            consent = given
        elif not isinstance(value, str):
            return None, f"{target}: expected text, got {type(value).__name__}"
        else:
            body[target] = value
    body["consent"] = {"marketing_email": consent}
    if job.format is ImportFormat.JSONL and job.mapping is None and isinstance(values.get("custom"), dict):
        custom = {**values["custom"], **custom}  # type: ignore[dict-item]  # a JSON line's own custom object
    return _validated(body, consent, custom, fields)


def _validated(
    body: dict[str, Any], consent: bool, custom: dict[str, object], fields: FieldSet
) -> tuple[Capture | None, str | None]:
    """``body`` (and the custom values) by the capture route's model, unless plainly valid."""
    if not custom and not fields.has_required:  # no custom value to check
        plain = plain_capture(body, consent)
        if plain is not None:
            return plain, None
    try:
        capture = CaptureIn.model_validate(body)
        if not custom and not fields.has_required:  # no custom value to check: nothing more to do
            return capture.to_capture(), None
        capture.custom = fields.from_cells(custom)
        return capture.to_capture(fields), None
    except ValidationError as exc:
        return None, validation_reasons(exc)
    except RuleViolation as exc:
        return None, row_reason(exc)


# ``CaptureIn``'s rules for what a row can give, checked directly (``plain_capture``).
_CHANNEL = re.compile(r"[a-z0-9][a-z0-9_.\-]*")
_TEXT_MAX = 200  # name, company, campaign: CaptureIn's max_length
_CHANNEL_MAX = 64


def _plain_text(value: object, required: bool = False) -> bool:
    """A text value ``CaptureIn`` keeps as it is: a string already trimmed (``mapped_cells``;
    Python's ``strip`` removes every character pydantic's would) within the length limit."""
    if value is None:
        return not required
    return isinstance(value, str) and 0 < len(value) <= _TEXT_MAX and value == value.strip()


def plain_capture(body: Mapping[str, Any], consent: bool) -> Capture | None:
    """The capture ``CaptureIn.model_validate(body).to_capture()`` gives, when every value of
    ``body`` is one it accepts unchanged (a plain address: ``normalized_email``, its own
    validation; names and companies within their limits; a plain channel); else None, and
    the row goes through ``CaptureIn`` (which words the error report's reason). An import's
    rows are nearly all plain: the model cost each about 10 us of leads' CPU (docs/performance.md,
    "Ninth session, import"). ``test_leads_importer_unit`` holds the two to the same answers."""
    email, channel = body.get("email"), body.get("source_channel")
    name, company, campaign = body.get("name"), body.get("company"), body.get("campaign")
    if not (_plain_text(name, required=True) and _plain_text(company) and _plain_text(campaign)):
        return None
    if not isinstance(channel, str) or not isinstance(email, str) or email != email.strip():
        return None
    channel = channel.strip().lower()
    if len(channel) > _CHANNEL_MAX or _CHANNEL.fullmatch(channel) is None:
        return None
    try:
        address = normalized_email(email)
    except PydanticCustomError:
        return None
    return Capture(
        email=address,
        name=str(name),
        source_channel=channel,
        marketing_email=consent,
        company=company,
        campaign=campaign,
    )


def sort_rows(
    job: ImportJob, records: Sequence[RawRecord], fields: FieldSet = NO_CUSTOM_FIELDS
) -> tuple[list[Capture], list[Rejection]]:
    return sort_records(job, records, lambda values, mapping: row_capture(values, mapping, job, fields))


class ImportWorker(platform_worker.ImportWorker[ImportJob, Capture]):
    """The leads process's import worker (``runtime.background``): one import at a time."""

    def __init__(
        self,
        uow: UnitOfWork[LeadsUnit],
        db: AsyncDatabase[dict[str, Any]],
        *,
        batch_rows: int,
        lease_seconds: float,
        poll_seconds: float,
        max_row_bytes: int,
        max_attempts: int = 5,
        in_flight: int = 1,
        custom_fields: CustomFieldRegistry | None = None,
    ) -> None:
        super().__init__(
            db,
            store.IMPORTS,
            uow.clock,
            batch_rows=batch_rows,
            lease_seconds=lease_seconds,
            poll_seconds=poll_seconds,
            max_row_bytes=max_row_bytes,
            max_attempts=max_attempts,
            in_flight=in_flight,
        )
        self.uow = uow
        self.custom_fields = custom_fields
        self.fields = NO_CUSTOM_FIELDS  # the lead's definitions, loaded as an import begins

    async def begin(self, job: ImportJob) -> None:
        if self.custom_fields is not None:
            self.fields = await self.custom_fields.current(RecordType.LEAD)

    def sort_rows(
        self, job: ImportJob, records: Sequence[RawRecord]
    ) -> tuple[list[Capture], list[Rejection]]:
        return sort_rows(job, records, self.fields)

    async def import_batch(
        self, job: ImportJob, at: Checkpoint, to: Checkpoint, rows: list[Capture], rejected: list[Rejection]
    ) -> Counts:
        with batch_heap():  # the bulk capture's batch path: no young collection walking it
            counts = await handlers.import_batch(self.uow, job.id, at, to, rows, rejected, self.fields)
        metrics.IMPORT_ROWS.labels("accepted").inc(len(rows))
        metrics.IMPORT_ROWS.labels("rejected").inc(len(rejected))
        return counts

    def batch_keys(self, rows: Sequence[Capture]) -> frozenset[str]:
        """A batch's emails: a batch repeating one of the batch in flight waits for it (merges)."""
        return frozenset(normalize_email(c.email) for c in rows)

    async def end_import(self, job_id: str, failure: str | None = None) -> ImportJob:
        return await handlers.end_import(self.uow, job_id, failure)
