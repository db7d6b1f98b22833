"""The import worker: takes queued imports and works them through in batches, resumably.

An adapter like ``consumers.py``: it reads the stored file from the job's checkpoint
(``store.read_file``), turns records into captures with the capture route's own
validation (``CaptureIn``: the same rules as ``POST /leads``), and hands each batch to
``handlers.import_batch`` (one transaction: leads, events, rejected rows, checkpoint).

One worker at a time per job: a worker **claims** a job by taking its lease
(``CRM_IMPORT_LEASE_SECONDS``) and renews it after every batch; a worker that died
leaves its lease to expire, and the next claim (the restarted process, or another
replica) resumes at the job's checkpoint. A worker that lost its lease stops at its next
batch (``StaleCheckpoint`` or a failed renewal), never writing a row twice.

A job whose processing keeps failing is not retried forever: each claim counts an
attempt (a committed batch starts the count again), the failure's reason is kept on the
job (``last_error``, shown while it retries), and the ``CRM_IMPORT_MAX_ATTEMPTS``-th
failure in a row, or a claim past that many (a failure that killed the process), marks
the job failed with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from crm_platform import audit
from crm_platform.actor import Actor
from crm_platform.clock import now_millis
from crm_platform.ids import new_id
from crm_platform.uow import UnitOfWork
from pydantic import ValidationError
from pymongo.asynchronous.database import AsyncDatabase

from leads import handlers, metrics, store
from leads.api.models import CaptureIn
from leads.domain.imports import (
    Checkpoint,
    ImportFormat,
    ImportJob,
    ImportState,
    InvalidMapping,
    RawRecord,
    RecordReader,
    Rejection,
    StaleCheckpoint,
    check_mapping,
    columns_missing,
    default_mapping,
    parse_header,
)
from leads.domain.leads import Capture
from leads.repository import LeadsUnit

log = logging.getLogger("leads.imports")

TRUE = frozenset({"true", "yes", "y", "1"})
FALSE = frozenset({"false", "no", "n", "0"})


class LeaseLost(RuntimeError):
    pass


def row_capture(
    values: Mapping[str, object], mapping: Mapping[str, str], job: ImportJob
) -> tuple[Capture | None, str | None]:
    """One record's capture by the capture route's rules, or why the row is rejected."""
    d = job.defaults
    body: dict[str, Any] = {"source_channel": d.source_channel, "campaign": d.campaign}
    consent = d.marketing_email
    for column, target in mapping.items():
        value = values.get(column)
        if isinstance(value, str):
            value = value.strip()
        if value is None or value == "":
            continue
        if target == "marketing_email":
            flag = value if isinstance(value, bool) else _flag(value)
            if flag is None:
                return None, f"marketing_email: {str(value)[:50]!r} is not true/false (yes/no, 1/0)"
            consent = flag
        elif not isinstance(value, str):
            return None, f"{target}: expected text, got {type(value).__name__}"
        else:
            body[target] = value
    body["consent"] = {"marketing_email": consent}
    try:
        return CaptureIn.model_validate(body).to_capture(), None
    except ValidationError as exc:
        reasons = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return None, "; ".join(reasons)


def _flag(value: object) -> bool | None:
    text = str(value).strip().lower()
    return True if text in TRUE else False if text in FALSE else None


def sort_rows(job: ImportJob, records: Sequence[RawRecord]) -> tuple[list[Capture], list[Rejection]]:
    mapping = job.effective_mapping()
    captures: list[Capture] = []
    rejected: list[Rejection] = []
    for rec in records:
        capture, problem = (
            (None, rec.problem) if rec.values is None else row_capture(rec.values, mapping, job)
        )
        if capture is not None:
            captures.append(capture)
        else:
            rejected.append(Rejection(job.id, rec.row, rec.line, rec.raw, problem or "unreadable"))
    return captures, rejected


class ImportWorker:
    """Background job of the leads process (``runtime.background``): one import at a time."""

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
    ) -> None:
        self.uow = uow
        self.db = db
        self.batch_rows = batch_rows
        self.lease = timedelta(seconds=lease_seconds)
        self.poll_seconds = poll_seconds
        self.max_row_bytes = max_row_bytes
        self.max_attempts = max_attempts
        self.owner = new_id()
        self._wake = asyncio.Event()

    def notify(self) -> None:
        """A file was stored: look for work now rather than at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                job = await store.claim_import(self.db, self.owner, now_millis(self.uow.clock), self.lease)
                if job is not None:
                    await self.work(job)
                    continue
            except Exception as exc:  # noqa: BLE001 - the worker must outlive a database outage
                log.warning("import worker: %s; retrying in %.0f s", exc, self.poll_seconds)
            self._wake.clear()
            # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a cancellation
            # that lands as the wake-up does, and the worker would outlive its runtime.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_seconds):
                    await self._wake.wait()

    async def work(self, job: ImportJob) -> None:
        """Import ``job`` from its checkpoint to its end (or until another worker has it)."""
        log.info(
            "import %s: %s from row %d (byte %d of %d), attempt %d",
            job.id,
            "resuming" if job.state is ImportState.RUNNING else "starting",
            job.checkpoint.row,
            job.checkpoint.offset,
            job.size,
            job.attempts,
            extra={"import_id": job.id},
        )
        # The audit log names the user who started the import for every change it makes.
        who = audit.actor_var.set(Actor(job.created_by, job.created_by_name))
        what = audit.operation_var.set(f"IMPORT {job.id}")
        try:
            await self._attempt(job)
        except (StaleCheckpoint, LeaseLost) as exc:
            log.warning("import %s left to another worker: %s", job.id, exc, extra={"import_id": job.id})
        except Exception as exc:
            if not await self._gave_up(job, f"{type(exc).__name__}: {exc}"):
                raise
        finally:
            audit.actor_var.reset(who)
            audit.operation_var.reset(what)
            await store.release_lease(self.db, job.id, self.owner)

    async def _attempt(self, job: ImportJob) -> None:
        if job.attempts > self.max_attempts:  # the earlier attempts died with their process
            await self._fail(job, job.last_error or "the worker stopped while importing it")
            return
        missing = columns_missing(job.effective_mapping(), job.header) if job.header else []
        if missing:
            await handlers.end_import(self.uow, job.id, f"the file has no columns {missing}")
            return
        await self._batches(job)
        done = await handlers.end_import(self.uow, job.id)
        await store.drop_chunks(self.db, job.id)
        log.info("import %s completed: %s", job.id, done.counts, extra={"import_id": job.id})

    async def _gave_up(self, job: ImportJob, reason: str) -> bool:
        """Keep why this attempt failed; on the last allowed one, fail the job (True)."""
        await store.note_import_failure(self.db, job.id, self.owner, reason)
        if job.attempts < self.max_attempts:
            return False
        await self._fail(job, reason)
        return True

    async def _fail(self, job: ImportJob, reason: str) -> None:
        n = self.max_attempts
        await handlers.end_import(
            self.uow, job.id, f"gave up after {n} attempt{'s' if n > 1 else ''} in a row failed: {reason}"
        )
        log.error("import %s failed for good: %s", job.id, reason, extra={"import_id": job.id})

    async def _batches(self, job: ImportJob) -> None:
        """Commit the file's batches in order, from the job's checkpoint.

        The next batch is read and validated (``_prepare``, a task of its own) while the
        previous batch's transaction is with the database, so the worker's CPU work and
        the database's overlap instead of taking turns; at most one batch waits ready.
        """
        ready: asyncio.Queue[Prepared | BaseException | None] = asyncio.Queue(maxsize=1)
        reader = asyncio.create_task(self._prepare(job, ready), name=f"import-{job.id}-reader")
        at = job.checkpoint
        try:
            while (batch := await ready.get()) is not None:
                if isinstance(batch, BaseException):
                    raise batch
                at = await self._commit(job, at, batch)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _prepare(self, job: ImportJob, ready: asyncio.Queue[Prepared | BaseException | None]) -> None:
        """Read the stored file into batches of sorted rows; None after the last, or the error."""
        reader = RecordReader(job.format, job.header, job.checkpoint, max_row_bytes=self.max_row_bytes)
        batch: list[RawRecord] = []
        try:
            async for chunk in store.read_file(self.db, job.id, job.checkpoint.offset):
                for record in reader.feed(chunk):
                    batch.append(record)
                    if len(batch) >= self.batch_rows:
                        await ready.put(Prepared.of(job, batch))
                        batch = []
            batch.extend(reader.close())
            if batch:
                await ready.put(Prepared.of(job, batch))
            await ready.put(None)
        except Exception as exc:  # noqa: BLE001 - handed to the committing loop, which raises it
            await ready.put(exc)

    async def _commit(self, job: ImportJob, at: Checkpoint, batch: Prepared) -> Checkpoint:
        await handlers.import_batch(self.uow, job.id, at, batch.to, batch.captures, batch.rejected)
        metrics.IMPORT_ROWS.labels("accepted").inc(len(batch.captures))
        metrics.IMPORT_ROWS.labels("rejected").inc(len(batch.rejected))
        until = now_millis(self.uow.clock) + self.lease
        if not await store.renew_lease(self.db, job.id, self.owner, until):
            raise LeaseLost(f"the lease on import {job.id} was taken by another worker")
        return batch.to


@dataclass(frozen=True)
class Prepared:
    """One batch read and validated, ready for its transaction."""

    captures: list[Capture]
    rejected: list[Rejection]
    to: Checkpoint  # where the file stands after the batch

    @classmethod
    def of(cls, job: ImportJob, records: Sequence[RawRecord]) -> Prepared:
        captures, rejected = sort_rows(job, records)
        return cls(captures, rejected, records[-1].checkpoint())


class BadFile(ValueError):
    """The upload cannot be imported at all (no header, a mapping naming absent columns)."""


class UploadTakenOver(RuntimeError):
    """Another upload of the same import took over (this one had gone quiet): stop storing."""


async def _always_mine() -> bool:
    return True


async def store_upload(
    db: AsyncDatabase[dict[str, Any]],
    job: ImportJob,
    body: AsyncIterator[bytes],
    *,
    max_row_bytes: int,
    still_mine: Callable[[], Awaitable[bool]] = _always_mine,
) -> tuple[int, list[str], int]:
    """Store the request body as the job's file, in chunks, as it streams in.

    Returns (size, a CSV's header columns, the offset where records start). A CSV's
    header is read from the first line and checked against the mapping before
    anything else is stored (``BadFile``); memory holds one chunk at a time. After each
    stored chunk ``still_mine`` renews the upload's claim on the job (the API's one-upload
    guard); False stops the upload (``UploadTakenOver``).
    """
    await store.drop_chunks(db, job.id)
    pending, size, n = bytearray(), 0, 0
    header: list[str] | None = None if job.format is ImportFormat.CSV else []
    data_start = 0
    async for piece in body:
        pending += piece
        size += len(piece)
        if header is None:
            header, data_start = _header(pending, job, max_row_bytes)
        while header is not None and len(pending) >= store.CHUNK_BYTES:
            if not await still_mine():
                raise UploadTakenOver(f"another upload of import '{job.id}' took over from this one")
            await store.put_chunk(db, job.id, n, bytes(pending[: store.CHUNK_BYTES]))
            del pending[: store.CHUNK_BYTES]
            n += 1
    if header is None:
        header, data_start = _header(pending, job, max_row_bytes, final=True)
    if size == 0:
        raise BadFile("the file is empty")
    if pending:
        await store.put_chunk(db, job.id, n, bytes(pending))
    return size, header or [], data_start


def _header(
    pending: bytearray, job: ImportJob, max_row_bytes: int, final: bool = False
) -> tuple[list[str] | None, int]:
    end = pending.find(b"\n")
    if end < 0 and not final:
        if len(pending) > max_row_bytes:
            raise BadFile(f"the header line is longer than {max_row_bytes} bytes")
        return None, 0
    line = bytes(pending if end < 0 else pending[: end + 1])
    try:
        columns = parse_header(line.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadFile("the header line is not valid UTF-8") from None
    except ValueError as exc:
        raise BadFile(str(exc)) from None
    mapping = job.mapping if job.mapping is not None else default_mapping(columns)
    missing = columns_missing(mapping, columns)
    if missing:
        raise BadFile(f"the mapping names columns the file does not have: {missing}; its columns: {columns}")
    try:
        check_mapping(mapping)
    except InvalidMapping as exc:
        raise BadFile(f"{exc}; the file's columns: {columns} (send a mapping)") from None
    return columns, len(line)
