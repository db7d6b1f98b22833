"""Importing records from a file: the job, its column mapping, and reading records incrementally.

Shared by every department that imports (issue 9: marketing's leads, sales' contacts); the
department keeps its row handling (a record's values -> its own validated command, by the
same rules as its create route) and its batch handler (one transaction). Each department
subclasses :class:`ImportJob` with the fields a column may map to (``FIELDS``, ``REQUIRED``)
and its own defaults type (values for the fields a row does not give).

An import is a job: created with its format and column mapping, given its file (stored
in chunks as it streams in), then worked through in batches. Each batch's leads, their
events, its rejected rows and the job's **checkpoint** (the byte offset just after the
batch's last record, and that record's number) commit in one transaction, so a job that
stops anywhere (a crash, a lost lease) resumes at its checkpoint with nothing doubled
and nothing skipped. (A department whose batches run two at a time stores a batch record
with where the batch ends instead, folded into the job's checkpoint in file order after the
commit: ``crm_platform.imports.worker``.)

:class:`RecordReader` turns the file's bytes, fed in pieces of any size, into records
with their byte offsets, holding at most one record (bounded by ``max_row_bytes``) in
memory. Everything here is pure: no I/O, no clock.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import ClassVar, Generic, Self, TypeVar

D = TypeVar("D")

MAX_COLUMNS = 200
RAW_KEPT = 2000  # characters of a rejected record kept in the error report


class ImportFormat(StrEnum):
    CSV = "csv"
    JSONL = "jsonl"


class ImportState(StrEnum):
    AWAITING_FILE = "awaiting_file"  # created; PUT the file
    UPLOADING = "uploading"  # the file is streaming in (a new PUT starts it again)
    QUEUED = "queued"  # stored whole; a worker will take it
    RUNNING = "running"  # batches being imported (resumes at its checkpoint after a crash)
    COMPLETED = "completed"
    FAILED = "failed"


class InvalidMapping(ValueError):
    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


CUSTOM_TARGET = re.compile(r"^custom\.[a-z][a-z0-9_]{0,39}$")
"""A column mapped to a custom field: ``custom.<key>`` (the key as an admin defined it)."""


def check_mapping(
    columns: Mapping[str, str],
    fields: Sequence[str],
    required: Sequence[str],
    record: str = "lead",
    custom: bool = False,
) -> dict[str, str]:
    """A column mapping (file column -> ``record`` field, or ``custom.<key>`` when the record has
    custom fields) as stored, or :class:`InvalidMapping`."""
    if len(columns) > MAX_COLUMNS:
        raise InvalidMapping(f"at most {MAX_COLUMNS} columns may be mapped", "columns")
    unknown = sorted(
        {f for f in columns.values() if f not in fields and not (custom and CUSTOM_TARGET.match(f))}
    )
    if unknown:
        raise InvalidMapping(
            f"unknown {record} fields {unknown}: a column maps to one of {list(fields)}", "columns"
        )
    targets = list(columns.values())
    twice = sorted({f for f in targets if targets.count(f) > 1})
    if twice:
        raise InvalidMapping(f"{record} fields {twice} are mapped from more than one column", "columns")
    missing = [f for f in required if f not in targets]
    if missing:
        raise InvalidMapping(f"no column is mapped to {missing} (required)", "columns")
    return dict(columns)


def default_mapping(header: Sequence[str], fields: Sequence[str], custom: bool = False) -> dict[str, str]:
    """Without a mapping: each column named like a field (any case, trimmed) maps to it, and
    with ``custom`` each column named ``custom.<key>`` to that custom field."""
    return {
        c: c.strip().lower()
        for c in header
        if c.strip().lower() in fields or (custom and CUSTOM_TARGET.match(c.strip().lower()))
    }


def columns_missing(mapping: Mapping[str, str], header: Sequence[str]) -> list[str]:
    """The mapping's columns the file's header does not have."""
    present = set(header)
    return [c for c in mapping if c not in present]


@dataclass(frozen=True)
class Checkpoint:
    offset: int = 0  # bytes of the file imported (the next record starts here)
    row: int = 0  # records read up to there (the header not counted)
    line: int = 0  # physical lines read up to there (the header counted)


@dataclass(frozen=True)
class Counts:
    read: int = 0
    accepted: int = 0  # stored: a new record or merged into one
    merged: int = 0  # of the accepted, those merged into an existing record (by its key)
    rejected: int = 0

    @classmethod
    def of_batch(cls, accepted: int, merged: int, rejected: int) -> Counts:
        """One batch's own counts (what it adds to the job's)."""
        return cls().plus(accepted, merged, rejected)

    def plus(self, accepted: int, merged: int, rejected: int) -> Counts:
        return Counts(
            self.read + accepted + rejected,
            self.accepted + accepted,
            self.merged + merged,
            self.rejected + rejected,
        )


class StaleCheckpoint(RuntimeError):
    """The job moved on (or ended) since this batch was read: another worker has it."""


class NotAcceptingFile(ValueError):
    pass


@dataclass(frozen=True)
class ImportJob(Generic[D]):
    """One import. A department subclasses it with its ``FIELDS`` (a column may map to one),
    ``REQUIRED`` (the fields a mapping must map) and its defaults type ``D``."""

    FIELDS: ClassVar[tuple[str, ...]] = ()
    REQUIRED: ClassVar[tuple[str, ...]] = ()
    RECORD: ClassVar[str] = "record"  # what a row becomes, in messages ("lead", "contact")
    # Whether a column may map to one of the record's custom fields (``custom.<key>``).
    CUSTOM_FIELDS: ClassVar[bool] = False

    id: str
    format: ImportFormat
    mapping: Mapping[str, str] | None  # None: the default mapping, from the file's header
    defaults: D
    created_by: str  # user id
    created_by_name: str
    created_at: datetime
    updated_at: datetime
    state: ImportState = ImportState.AWAITING_FILE
    file_name: str | None = None
    size: int = 0  # bytes stored
    header: tuple[str, ...] = ()  # a CSV file's columns
    checkpoint: Checkpoint = Checkpoint()
    counts: Counts = Counts()
    error: str | None = None  # why the job failed
    started_at: datetime | None = None
    finished_at: datetime | None = None
    mapping_name: str | None = None
    idempotency_key: str | None = field(default=None, compare=False)
    # The worker's, outside the job's transactions (like its lease): claims since the last
    # committed batch, and the last failure's reason (leads.importer's retry limit).
    attempts: int = field(default=0, compare=False)
    last_error: str | None = field(default=None, compare=False)

    @classmethod
    def checked_mapping(cls, columns: Mapping[str, str]) -> dict[str, str]:
        """``columns`` checked against this kind of import's fields (:class:`InvalidMapping`)."""
        return check_mapping(columns, cls.FIELDS, cls.REQUIRED, cls.RECORD, cls.CUSTOM_FIELDS)

    @classmethod
    def mapping_for(cls, header: Sequence[str]) -> dict[str, str]:
        """Without a mapping: the CSV header's columns named like this import's fields."""
        return default_mapping(header, cls.FIELDS, cls.CUSTOM_FIELDS)

    def effective_mapping(self) -> dict[str, str]:
        """The mapping given, else a CSV's columns named like the fields, else the fields' names."""
        if self.mapping is not None:
            return dict(self.mapping)
        if self.format is ImportFormat.JSONL:
            return {f: f for f in self.FIELDS}
        return self.mapping_for(self.header)

    def start_upload(self, file_name: str | None, now: datetime) -> Self:
        if self.state not in (ImportState.AWAITING_FILE, ImportState.UPLOADING):
            raise NotAcceptingFile(f"the import is '{self.state}': its file was received already")
        return dataclasses.replace(
            self, state=ImportState.UPLOADING, file_name=file_name, size=0, updated_at=now
        )

    def uploaded(self, size: int, header: Sequence[str], data_start: int, now: datetime) -> Self:
        """The whole file is stored: queue it. A CSV's records start after its header line."""
        if self.state != ImportState.UPLOADING:
            raise NotAcceptingFile(f"the import is '{self.state}', not uploading")
        first = Checkpoint(offset=data_start, row=0, line=1 if header else 0)
        return dataclasses.replace(
            self, state=ImportState.QUEUED, size=size, header=tuple(header), checkpoint=first, updated_at=now
        )

    def advance(self, expected: Checkpoint, to: Checkpoint, counts: Counts, now: datetime) -> Self:
        """One batch imported: from ``expected`` (where it started) to ``to``."""
        if self.state not in (ImportState.QUEUED, ImportState.RUNNING) or self.checkpoint != expected:
            raise StaleCheckpoint(f"import {self.id} is at {self.checkpoint}, not {expected}")
        return dataclasses.replace(
            self,
            state=ImportState.RUNNING,
            checkpoint=to,
            counts=counts,
            started_at=self.started_at or now,
            updated_at=now,
        )

    def check_batch(self, at: Checkpoint) -> None:
        """A batch starting at ``at`` may still be stored as a batch record: the job runs and has
        not passed ``at`` (the batches before it may not be folded into the job yet)."""
        if self.state not in (ImportState.QUEUED, ImportState.RUNNING) or self.checkpoint.offset > at.offset:
            raise StaleCheckpoint(f"import {self.id} is at {self.checkpoint}, past {at}")

    def complete(self, now: datetime) -> Self:
        return dataclasses.replace(
            self,
            state=ImportState.COMPLETED,
            started_at=self.started_at or now,
            finished_at=now,
            updated_at=now,
        )

    def fail(self, reason: str, now: datetime) -> Self:
        return dataclasses.replace(
            self, state=ImportState.FAILED, error=reason, finished_at=now, updated_at=now
        )


@dataclass(frozen=True)
class Rejection:
    """One rejected row of an import, as the error report lists it."""

    job_id: str
    row: int  # record number (1 = the first after a CSV's header)
    line: int  # physical line where the record starts (a CSV's header is line 1)
    raw: str  # the record as read (cut to RAW_KEPT characters)
    reason: str


@dataclass(frozen=True)
class RawRecord:
    """One record of the file: its values by column, or why it could not be read."""

    row: int
    line: int
    end: int  # byte offset just after the record
    end_line: int  # physical lines read up to its end
    raw: str
    values: Mapping[str, object] | None
    problem: str | None = None

    def checkpoint(self) -> Checkpoint:
        return Checkpoint(self.end, self.row, self.end_line)


class RecordReader:
    """Records from a file's bytes fed in pieces (:meth:`feed`, then :meth:`close`).

    Starts at ``start`` (a checkpoint: byte offset, record and line numbers). A CSV record
    may span lines inside quotes; a record longer than ``max_row_bytes`` (or a quote opened
    and never closed within it) is reported as a problem record and skipped without being
    held whole. Empty lines are skipped.
    """

    def __init__(
        self, fmt: ImportFormat, header: Sequence[str], start: Checkpoint, *, max_row_bytes: int = 65536
    ) -> None:
        self.fmt = fmt
        self.header = list(header)
        self.max_row = max_row_bytes
        self.offset = start.offset  # bytes consumed into complete lines
        self.row = start.row
        self.line = start.line
        self._partial = bytearray()  # the current line, not terminated yet
        self._record: list[bytes] = []  # the current record's complete lines (CSV quotes)
        self._record_bytes = 0
        self._quotes = 0
        self._skipping = False  # inside an oversize line: drop bytes until its end

    def feed(self, data: bytes) -> Iterator[RawRecord]:
        start = 0
        while start < len(data):
            end = data.find(b"\n", start)
            if end < 0:
                self._add_partial(data[start:])
                return
            piece = data[start : end + 1]
            start = end + 1
            if self._skipping:
                self.offset += len(piece)
                self._skipping = False
                yield self._oversize(b"")
                continue
            if self._partial:
                self._partial += piece
                line, self._partial = bytes(self._partial), bytearray()
            else:
                line = piece  # the line began in this piece: no copy through the buffer
            yield from self._line(line)

    def close(self) -> Iterator[RawRecord]:
        """The last record, if the file does not end with a newline."""
        if self._skipping:
            self._skipping = False
            yield self._oversize(b"")
        elif self._partial or self._record:
            line, self._partial = bytes(self._partial), bytearray()
            yield from self._line(line, final=True)

    def _add_partial(self, piece: bytes) -> None:
        if self._skipping:
            self.offset += len(piece)
            return
        self._partial += piece
        if len(self._partial) + self._record_bytes > self.max_row:
            self.offset += len(self._partial)
            self._partial = bytearray()
            self._skipping = True

    def _line(self, line: bytes, final: bool = False) -> Iterator[RawRecord]:
        self.offset += len(line)
        if not self._record and not line.strip():
            self.line += 1
            return
        self._record.append(line)
        self._record_bytes += len(line)
        self._quotes += line.count(b'"')
        if self._record_bytes > self.max_row:
            yield self._oversize(b"".join(self._record))
            return
        if self.fmt is ImportFormat.CSV and self._quotes % 2 and not final:
            return  # inside a quoted field: the record goes on on the next line
        raw = b"".join(self._record)
        first_line = self.line + 1
        self.line += len(self._record)
        self._record, self._record_bytes, self._quotes = [], 0, 0
        self.row += 1
        yield self._parse(raw, first_line)

    def _oversize(self, head: bytes) -> RawRecord:
        first_line = self.line + 1
        self.line += max(len(self._record), 1)
        self._record, self._record_bytes, self._quotes = [], 0, 0
        self.row += 1
        text = head[:RAW_KEPT].decode("utf-8", "replace")
        return RawRecord(
            self.row,
            first_line,
            self.offset,
            self.line,
            text,
            None,
            f"row longer than {self.max_row} bytes (or a quote opened and never closed)",
        )

    def _parse(self, raw: bytes, line: int) -> RawRecord:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            shown = raw[:RAW_KEPT].decode("utf-8", "replace").rstrip("\r\n")
            bad = f"not valid UTF-8 (byte {exc.start})"
            return RawRecord(self.row, line, self.offset, self.line, shown, None, bad)
        shown = text.rstrip("\r\n")[:RAW_KEPT]
        values, problem = parse_csv(text, self.header) if self.fmt is ImportFormat.CSV else parse_jsonl(text)
        return RawRecord(self.row, line, self.offset, self.line, shown, values, problem)


def parse_header(text: str) -> list[str]:
    """A CSV header line's column names (trimmed); ValueError if empty, repeated or unreadable."""
    try:
        rows = list(csv.reader([text.lstrip("\ufeff")], strict=True))
    except csv.Error as exc:
        raise ValueError(f"the header line is not valid CSV: {exc}") from None
    if len(rows) != 1 or not any(c.strip() for c in rows[0]):
        raise ValueError("the file has no header line (the first line names the columns)")
    columns = [c.strip() for c in rows[0]]
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise ValueError(f"the header names columns {repeated} more than once")
    if len(columns) > MAX_COLUMNS:
        raise ValueError(f"the header has {len(columns)} columns; at most {MAX_COLUMNS}")
    return columns


def parse_csv(text: str, header: Sequence[str]) -> tuple[Mapping[str, object] | None, str | None]:
    lines = text.splitlines(keepends=True)
    plain = lines[0].rstrip("\r\n") if len(lines) == 1 and '"' not in text else ""
    if plain:
        # One line without a quote (most records): the csv module's cells are its comma-separated
        # pieces (its line end aside); test_plain_lines_split_as_the_csv_module_splits_them.
        cells = plain.split(",")
    else:
        try:
            rows = list(csv.reader(lines, strict=True))
        except csv.Error as exc:
            return None, f"malformed CSV: {exc}"
        if len(rows) != 1:
            return None, "malformed CSV: not one record"
        cells = rows[0]
    if len(cells) != len(header):
        return None, f"has {len(cells)} fields; the header has {len(header)}"
    return dict(zip(header, cells, strict=True)), None


def parse_jsonl(text: str) -> tuple[Mapping[str, object] | None, str | None]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        return None, f"not JSON: {exc}"
    if not isinstance(value, dict):
        return None, "not a JSON object"
    return value, None
