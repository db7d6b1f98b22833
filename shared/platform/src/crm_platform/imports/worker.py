"""The import worker: takes queued imports and works them through in batches, resumably.

Shared by every department that imports (leads, sales). A department subclasses
:class:`ImportWorker` with its row handling: :meth:`~ImportWorker.sort_rows` turns records
into its own validated commands by its create route's rules (or rejects them, with why),
:meth:`~ImportWorker.import_batch` stores one batch in ONE transaction (its records and
events, the rejected rows, the job's checkpoint) and :meth:`~ImportWorker.end_import` ends
the job. The worker reads the stored file from the job's checkpoint (``store.read_file``).

One worker at a time per job: a worker **claims** a job by taking its lease
(``CRM_IMPORT_LEASE_SECONDS``) and renews it after every batch; a worker that died
leaves its lease to expire, and the next claim (the restarted process, or another
replica) resumes at the job's checkpoint. A worker that lost its lease stops at its next
batch (``StaleCheckpoint`` or a failed renewal), never writing a row twice.

**Two batches in flight.** A department that stores each batch as a batch record
(``unit.imports.add_batch`` instead of saving the job's checkpoint, so two batches'
transactions write no common document) and names each batch's dedupe keys
(:meth:`~ImportWorker.batch_keys`, leads: the rows' emails) gets up to ``in_flight``
(``CRM_IMPORT_IN_FLIGHT``) batch transactions at once: batch N+1's reads, its Python work
and its writes run while batch N's are with the database, so the process and the database
work side by side instead of taking turns. The batches still commit in file order (N+1's
transaction waits for N's commit just before its own, ``crm_platform.mongo.commit_after_var``,
and aborts if N's failed), a batch sharing a key with one in flight waits for it to end
first (it would merge into a lead the other is inserting), and after each commit the
worker folds the batch's record into the job's checkpoint and counts, in order
(``store.fold_batch``, which renews the lease). A worker that stops between a commit and its
fold leaves the record: the next claim folds it before reading on (:meth:`_caught_up`).

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
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Generic, TypeVar

from pydantic import ValidationError
from pymongo.asynchronous.database import AsyncDatabase

from crm_platform import audit
from crm_platform.actor import Actor
from crm_platform.clock import Clock, now_millis
from crm_platform.ids import new_id
from crm_platform.imports import store
from crm_platform.imports.domain import (
    Checkpoint,
    Counts,
    ImportFormat,
    ImportJob,
    ImportState,
    InvalidMapping,
    RawRecord,
    RecordReader,
    Rejection,
    StaleCheckpoint,
    columns_missing,
    parse_header,
)
from crm_platform.imports.store import JobCodec
from crm_platform.mongo import commit_after_var

log = logging.getLogger("crm.imports")

J = TypeVar("J", bound=ImportJob[Any])
R = TypeVar("R")

TRUE = frozenset({"true", "yes", "y", "1"})
FALSE = frozenset({"false", "no", "n", "0"})


class LeaseLost(RuntimeError):
    pass


class EarlierBatchFailed(RuntimeError):
    """The batch before this one did not commit: this one, in flight beside it, is not kept."""


def flag(value: object) -> bool | None:
    """A yes/no cell (true/false, yes/no, y/n, 1/0; any case), or None when it is neither."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    return True if text in TRUE else False if text in FALSE else None


class ImportWorker(Generic[J, R]):
    """Background job of a department's process (``runtime.background``): one import at a time.

    Subclasses give the department's row handling (``R``: what one accepted row becomes)."""

    def __init__(
        self,
        db: AsyncDatabase[dict[str, Any]],
        codec: JobCodec[J],
        clock: Clock,
        *,
        batch_rows: int,
        lease_seconds: float,
        poll_seconds: float,
        max_row_bytes: int,
        max_attempts: int = 5,
        in_flight: int = 1,
    ) -> None:
        self.db = db
        self.codec = codec
        self.clock = clock
        self.batch_rows = batch_rows
        self.lease = timedelta(seconds=lease_seconds)
        self.poll_seconds = poll_seconds
        self.max_row_bytes = max_row_bytes
        self.max_attempts = max_attempts
        self.in_flight = max(1, in_flight)
        self.owner = new_id()
        self._wake = asyncio.Event()

    # -- the department's part --------------------------------------------------------

    def sort_rows(self, job: J, records: Sequence[RawRecord]) -> tuple[list[R], list[Rejection]]:
        """Each record as the department's command (by its create route's rules), or rejected."""
        raise NotImplementedError

    async def import_batch(
        self, job: J, at: Checkpoint, to: Checkpoint, rows: list[R], rejected: list[Rejection]
    ) -> Counts | None:
        """One batch in ONE transaction: its rows, their events, the rejections, the checkpoint
        (``StaleCheckpoint`` when the job is no longer at ``at``). Either the job itself is
        advanced and saved (returns None), or the batch's record is stored
        (``unit.imports.add_batch``) and its counts returned: the worker folds it into the job."""
        raise NotImplementedError

    def batch_keys(self, rows: Sequence[R]) -> frozenset[str] | None:
        """The keys the batch's rows dedupe on (two batches sharing one never run at once), or
        None: this department's batches run one at a time (its transaction saves the job)."""
        return None

    async def end_import(self, job_id: str, failure: str | None = None) -> J:
        """The last batch is in (``failure`` None), or the job failed (why)."""
        raise NotImplementedError

    async def begin(self, job: J) -> None:
        """Before the job's first batch (of each attempt): load what ``sort_rows`` needs that
        lives in the database (leads: the lead's custom field definitions)."""

    # -- the machinery ------------------------------------------------------------------

    def notify(self) -> None:
        """A file was stored: look for work now rather than at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                job = await store.claim_import(
                    self.db, self.codec, self.owner, now_millis(self.clock), self.lease
                )
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

    async def work(self, job: J) -> None:
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

    async def _attempt(self, job: J) -> None:
        if job.attempts > self.max_attempts:  # the earlier attempts died with their process
            await self._fail(job, job.last_error or "the worker stopped while importing it")
            return
        missing = columns_missing(job.effective_mapping(), job.header) if job.header else []
        if missing:
            await self.end_import(job.id, f"the file has no columns {missing}")
            return
        await self.begin(job)
        await self._batches(await self._caught_up(job))
        done = await self.end_import(job.id)
        await store.drop_chunks(self.db, job.id)
        log.info("import %s completed: %s", job.id, done.counts, extra={"import_id": job.id})

    async def _gave_up(self, job: J, reason: str) -> bool:
        """Keep why this attempt failed; on the last allowed one, fail the job (True)."""
        await store.note_import_failure(self.db, job.id, self.owner, reason)
        if job.attempts < self.max_attempts:
            return False
        await self._fail(job, reason)
        return True

    async def _fail(self, job: J, reason: str) -> None:
        n = self.max_attempts
        await self.end_import(
            job.id, f"gave up after {n} attempt{'s' if n > 1 else ''} in a row failed: {reason}"
        )
        log.error("import %s failed for good: %s", job.id, reason, extra={"import_id": job.id})

    async def _batches(self, job: J) -> None:
        """Commit the file's batches in order, from the job's checkpoint.

        The next batch is read and validated (``_prepare``, a task of its own) while the
        batches before it are with the database; up to ``in_flight`` batches' transactions
        run at once (:meth:`batch_keys`), committing and folded into the job in file order.
        """
        ready: asyncio.Queue[Prepared[R] | BaseException | None] = asyncio.Queue(maxsize=1)
        reader = asyncio.create_task(self._prepare(job, ready), name=f"import-{job.id}-reader")
        flights: deque[Flight] = deque()
        at = job.checkpoint
        try:
            while (batch := await ready.get()) is not None:
                if isinstance(batch, BaseException):
                    raise batch
                keys = self.batch_keys(batch.rows) if self.in_flight > 1 else None
                while flights and (keys is None or len(flights) >= self.in_flight or _shares(keys, flights)):
                    await self._settle(job, flights.popleft())
                before = flights[-1].task if flights else None
                task = asyncio.create_task(
                    self._commit(job, at, batch, before), name=f"import-{job.id}-batch"
                )
                flights.append(Flight(at, batch.to, keys or frozenset(), task))
                at = batch.to
            while flights:
                await self._settle(job, flights.popleft())
        finally:
            for flight in flights:
                flight.task.cancel()
            await asyncio.gather(*(f.task for f in flights), return_exceptions=True)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _prepare(self, job: J, ready: asyncio.Queue[Prepared[R] | BaseException | None]) -> None:
        """Read the stored file into batches of sorted rows; None after the last, or the error."""
        reader = RecordReader(job.format, job.header, job.checkpoint, max_row_bytes=self.max_row_bytes)
        batch: list[RawRecord] = []
        try:
            async for chunk in store.read_file(self.db, job.id, job.checkpoint.offset):
                for record in reader.feed(chunk):
                    batch.append(record)
                    if len(batch) >= self.batch_rows:
                        await ready.put(self._prepared(job, batch))
                        batch = []
            batch.extend(reader.close())
            if batch:
                await ready.put(self._prepared(job, batch))
            await ready.put(None)
        except Exception as exc:  # noqa: BLE001 - handed to the committing loop, which raises it
            await ready.put(exc)

    def _prepared(self, job: J, records: Sequence[RawRecord]) -> Prepared[R]:
        rows, rejected = self.sort_rows(job, records)
        return Prepared(rows, rejected, records[-1].checkpoint())

    async def _commit(
        self, job: J, at: Checkpoint, batch: Prepared[R], before: asyncio.Task[Counts | None] | None
    ) -> Counts | None:
        """The batch's transaction (a task of its own); with ``before`` (the previous batch's,
        still in flight) it commits only after that one has, and not at all if it failed."""
        if before is not None:
            commit_after_var.set(lambda: _committed(before))
        return await self.import_batch(job, at, batch.to, batch.rows, batch.rejected)

    async def _settle(self, job: J, flight: Flight) -> None:
        """The oldest batch in flight has committed: fold its record into the job (or, when its
        transaction advanced the job itself, renew the lease)."""
        counts = await flight.task
        if counts is not None:
            await self._fold(job, flight.at, flight.to, counts)
            return
        until = now_millis(self.clock) + self.lease
        if not await store.renew_lease(self.db, job.id, self.owner, until):
            raise LeaseLost(f"the lease on import {job.id} was taken by another worker")

    async def _fold(self, job: J, at: Checkpoint, to: Checkpoint, counts: Counts) -> None:
        now = now_millis(self.clock)
        if not await store.fold_batch(self.db, job.id, self.owner, at, to, counts, now, now + self.lease):
            raise LeaseLost(f"import {job.id} is no longer this worker's at {at}")

    async def _caught_up(self, job: J) -> J:
        """``job`` with the batch records stored past its checkpoint folded in: a worker that
        stopped between a batch's commit and its fold left them (the batches commit in order,
        so they follow each other from the checkpoint)."""
        at = job.checkpoint
        while (stored := await store.stored_batch(self.db, job.id, at)) is not None:
            await self._fold(job, at, *stored)
            at = stored[0]
        if at == job.checkpoint:
            return job
        return await store.get_import(self.db, self.codec, job.id) or job


async def _committed(before: asyncio.Task[Counts | None]) -> None:
    """Wait for the previous batch's transaction: it committed, or this one must not."""
    await asyncio.wait([before])
    if before.cancelled() or before.exception() is not None:
        raise EarlierBatchFailed("the batch before this one did not commit")


def _shares(keys: frozenset[str], flights: deque[Flight]) -> bool:
    return any(not keys.isdisjoint(f.keys) for f in flights)


@dataclass(frozen=True)
class Flight:
    """One batch's transaction in flight: where it starts and ends, its dedupe keys."""

    at: Checkpoint
    to: Checkpoint
    keys: frozenset[str]
    task: asyncio.Task[Counts | None]


@dataclass(frozen=True)
class Prepared(Generic[R]):
    """One batch read and validated, ready for its transaction."""

    rows: list[R]
    rejected: list[Rejection]
    to: Checkpoint  # where the file stands after the batch


class BadFile(ValueError):
    """The upload cannot be imported at all (no header, a mapping naming absent columns)."""


class UploadTakenOver(RuntimeError):
    """Another upload of the same import took over (this one had gone quiet): stop storing."""


async def _always_mine() -> bool:
    return True


async def store_upload(
    db: AsyncDatabase[dict[str, Any]],
    job: ImportJob[Any],
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
    pending: bytearray, job: ImportJob[Any], max_row_bytes: int, final: bool = False
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
    mapping = job.mapping if job.mapping is not None else job.mapping_for(columns)
    missing = columns_missing(mapping, columns)
    if missing:
        raise BadFile(f"the mapping names columns the file does not have: {missing}; its columns: {columns}")
    try:
        job.checked_mapping(mapping)
    except InvalidMapping as exc:
        raise BadFile(f"{exc}; the file's columns: {columns} (send a mapping)") from None
    return columns, len(line)


def sort_records(
    job: ImportJob[Any],
    records: Sequence[RawRecord],
    row: Callable[[Mapping[str, object], Mapping[str, str]], tuple[R | None, str | None]],
) -> tuple[list[R], list[Rejection]]:
    """Each readable record through ``row`` (the department's: its command, or why not) with
    the job's mapping; an unreadable one or a refused one becomes a :class:`Rejection`."""
    mapping = job.effective_mapping()
    accepted: list[R] = []
    rejected: list[Rejection] = []
    for rec in records:
        value, problem = (None, rec.problem) if rec.values is None else row(rec.values, mapping)
        if value is not None:
            accepted.append(value)
        else:
            rejected.append(Rejection(job.id, rec.row, rec.line, rec.raw, problem or "unreadable"))
    return accepted, rejected


def mapped_cells(values: Mapping[str, object], mapping: Mapping[str, str]) -> Iterator[tuple[str, object]]:
    """``(field, value)`` for each mapped column with a value (strings trimmed; empty skipped)."""
    for column, target in mapping.items():
        value = values.get(column)
        if isinstance(value, str):
            value = value.strip()
        if value is None or value == "":
            continue
        yield target, value


def validation_reasons(exc: ValidationError) -> str:
    """A request model's refusal as one line of the error report."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
