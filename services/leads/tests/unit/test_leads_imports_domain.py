"""The import's pure pieces: reading records incrementally with offsets, mappings, the job."""

from __future__ import annotations

import csv
import itertools
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from crm_platform.imports import domain as imports_domain
from leads.domain.imports import (
    Checkpoint,
    Counts,
    ImportDefaults,
    ImportFormat,
    ImportJob,
    ImportState,
    InvalidMapping,
    RawRecord,
    RecordReader,
    StaleCheckpoint,
    check_mapping,
    default_mapping,
    parse_header,
)

NOW = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
HEADER = ["email", "name", "company"]


def read_all(
    data: bytes, piece: int, fmt: ImportFormat = ImportFormat.CSV, start: int = 0
) -> list[RawRecord]:
    reader = RecordReader(fmt, HEADER, Checkpoint(offset=start, line=1), max_row_bytes=1024)
    out: list[RawRecord] = []
    for i in range(start, len(data), piece):
        out.extend(reader.feed(data[i : i + piece]))
    out.extend(reader.close())
    return out


CSV = (
    b"email,name,company\n"
    b"a@x.com,Ann,Acme\r\n"
    b'b@x.com,"Bob, Jr.","Multi\nline Co"\n'
    b"\n"
    b"c@x.com,Cy\n"
    b"d@x.com,D\xff,Dee\n"
    b"e@x.com,Eve,E"
)
DATA_START = len(b"email,name,company\n")


@pytest.mark.parametrize("piece", [1, 3, 7, 64, 10_000])
def test_records_are_the_same_whatever_the_pieces_they_arrive_in(piece: int) -> None:
    records = read_all(CSV, piece, start=DATA_START)
    assert [r.row for r in records] == [1, 2, 3, 4, 5]
    assert records[0].values == {"email": "a@x.com", "name": "Ann", "company": "Acme"}
    assert records[1].values == {"email": "b@x.com", "name": "Bob, Jr.", "company": "Multi\nline Co"}
    assert records[2].values is None
    assert records[2].problem == "has 2 fields; the header has 3"
    assert records[3].problem is not None
    assert "UTF-8" in records[3].problem
    assert records[4].values == {"email": "e@x.com", "name": "Eve", "company": "E"}
    # Lines: header 1, Ann 2, Bob 3-4, blank 5, Cy 6, Dee 7, Eve 8.
    assert [r.line for r in records] == [2, 3, 6, 7, 8]
    assert records[-1].end == len(CSV)


def test_resuming_at_a_records_checkpoint_reads_exactly_the_rest() -> None:
    whole = read_all(CSV, 5, start=DATA_START)
    at = whole[1].checkpoint()
    reader = RecordReader(ImportFormat.CSV, HEADER, at, max_row_bytes=1024)
    rest = [*reader.feed(CSV[at.offset :]), *reader.close()]
    assert [(r.row, r.line, r.raw) for r in rest] == [(r.row, r.line, r.raw) for r in whole[2:]]


def test_an_oversize_row_is_rejected_without_being_held_and_reading_goes_on() -> None:
    data = b"a@x.com,Ann,A\n" + b"x" * 50_000 + b"\nb@x.com,Bob,B\n"
    records = read_all(data, 333)
    assert [r.row for r in records] == [1, 2, 3]
    assert records[1].problem is not None
    assert "longer than 1024 bytes" in records[1].problem
    assert len(records[1].raw) <= 2000
    assert records[2].values == {"email": "b@x.com", "name": "Bob", "company": "B"}


def test_an_unclosed_quote_spoils_only_the_rows_within_the_row_limit() -> None:
    data = b'a@x.com,"Ann,A\n' + b"b@x.com,Bob,B\n" * 100 + b"z@x.com,Zed,Z\n"
    records = read_all(data, 50)
    assert records[0].problem is not None
    assert records[-1].values == {"email": "z@x.com", "name": "Zed", "company": "Z"}


def test_json_lines_records_and_their_problems() -> None:
    data = b'{"email": "a@x.com", "name": "Ann"}\nnot json\n[1, 2]\n{"email": "b@x.com"}'
    records = read_all(data, 4, ImportFormat.JSONL)
    assert records[0].values == {"email": "a@x.com", "name": "Ann"}
    assert records[1].problem is not None
    assert records[1].problem.startswith("not JSON")
    assert records[2].problem == "not a JSON object"
    assert records[3].values == {"email": "b@x.com"}


def _big_csv(rows: int) -> Iterator[bytes]:
    for start in range(0, rows, 1000):
        yield b"".join(
            b"p%d@example.com,Person %d,Company %d\n" % (i, i, i) for i in range(start, start + 1000)
        )


def _peak_reading(rows: int) -> int:
    """The most memory Python held while reading a CSV of ``rows`` rows, fed in pieces."""
    reader = RecordReader(ImportFormat.CSV, HEADER, Checkpoint(), max_row_bytes=1024)
    tracemalloc.start()
    try:
        count = 0
        for piece in _big_csv(rows):
            for _ in reader.feed(piece):
                count += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == rows
    return peak


def test_reading_a_file_far_larger_than_a_batch_holds_one_piece_at_a_time() -> None:
    # 4,000 rows are about 170 KB, 16,000 about 710 KB: a reader that kept what it read would
    # need some 540 KB more for the larger file; one that holds a piece at a time needs the
    # same for both. (Small files: tracemalloc makes every allocation slow.)
    small, large = _peak_reading(4_000), _peak_reading(16_000)
    assert large - small < 100_000, f"peak {small} bytes for 4,000 rows but {large} for 16,000"
    assert large < 1_000_000


def test_mappings_name_lead_fields_once_and_map_email_and_name() -> None:
    assert check_mapping({"E-mail": "email", "Full name": "name"}) == {"E-mail": "email", "Full name": "name"}
    with pytest.raises(InvalidMapping, match="unknown lead fields \\['phone'\\]"):
        check_mapping({"E-mail": "email", "Full name": "name", "Tel": "phone"})
    with pytest.raises(InvalidMapping, match="more than one column"):
        check_mapping({"a": "email", "b": "email", "c": "name"})
    with pytest.raises(InvalidMapping, match="required"):
        check_mapping({"a": "email"})
    assert default_mapping([" Email", "NAME", "phone"]) == {" Email": "email", "NAME": "name"}


def test_a_header_names_each_column_once() -> None:
    assert parse_header("\ufeffemail, name\r\n") == ["email", "name"]
    with pytest.raises(ValueError, match="more than once"):
        parse_header("email,email\n")
    with pytest.raises(ValueError, match="no header"):
        parse_header("\n")


def test_a_job_moves_only_from_the_checkpoint_it_is_at() -> None:
    job = ImportJob("j1", ImportFormat.CSV, None, ImportDefaults(), "u1", "ann", NOW, NOW)
    job = job.start_upload("f.csv", NOW).uploaded(100, HEADER, 19, NOW)
    assert job.state is ImportState.QUEUED
    assert job.checkpoint == Checkpoint(19, 0, 1)
    moved = job.advance(job.checkpoint, Checkpoint(60, 2, 3), Counts(2, 1, 0, 1), NOW)
    assert moved.state is ImportState.RUNNING
    with pytest.raises(StaleCheckpoint):
        moved.advance(job.checkpoint, Checkpoint(60, 2, 3), Counts(2, 1, 0, 1), NOW)
    assert moved.complete(NOW).state is ImportState.COMPLETED


def _by_the_csv_module(text: str, header: list[str]) -> tuple[object, str | None]:
    try:
        rows = list(csv.reader(text.splitlines(keepends=True), strict=True))
    except csv.Error as exc:
        return None, f"malformed CSV: {exc}"
    if len(rows) != 1:
        return None, "malformed CSV: not one record"
    if len(rows[0]) != len(header):
        return None, f"has {len(rows[0])} fields; the header has {len(header)}"
    return dict(zip(header, rows[0], strict=True)), None


def test_plain_lines_split_as_the_csv_module_splits_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """A record of one line without a quote is split on its commas, not read by the csv module:
    the same cells and problems for every short text of line ends, separators and quotes."""
    alphabet = ["a", ",", "\r", "\n", " ", "\x00", "\x0b", "\x85", "\u2028", "é", '"']
    for n in range(5):
        for text in ("".join(t) for t in itertools.product(alphabet, repeat=n)):
            for header in (["c0"], ["c0", "c1"], ["c0", "c1", "c2"]):
                assert imports_domain.parse_csv(text, header) == _by_the_csv_module(text, header), (
                    text,
                    header,
                )

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the csv module read a plain line")

    monkeypatch.setattr(csv, "reader", refuse)
    assert imports_domain.parse_csv("a@x.com,Ann,Acme\r\n", HEADER) == (
        {"email": "a@x.com", "name": "Ann", "company": "Acme"},
        None,
    )
