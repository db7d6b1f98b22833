"""crm-ops' pure parts: reading a dead letter's headers, counting reasons, the progress bar."""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import UTC, datetime

from crm_platform.dead_letters import dead_letter_headers
from crm_platform.ops import Progress, _age, dead_letter, reasons


@dataclass
class Record:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


def _record(value: bytes | None, reason: str = "schema_invalid", offset: int = 7) -> Record:
    headers = dead_letter_headers(
        [("traceparent", b"00-abc")],
        reason=reason,
        error="occurred_at: not a date-time",
        consumer_group="service-desk",
        topic="crm.sales.deal-won",
        partition=2,
        offset=41,
        failed_at=datetime(2026, 12, 5, tzinfo=UTC),
    )
    return Record(0, offset, b"deal-1", value, headers)


def test_a_dead_letter_reads_its_reason_origin_and_event() -> None:
    letter = dead_letter("service-desk", _record(b'{"event_type": "deal.won", "event_id": "e-9"}'))
    assert (letter.reason, letter.error) == ("schema_invalid", "occurred_at: not a date-time")
    assert (letter.consumer_group, letter.source_topic, letter.source_partition, letter.source_offset) == (
        "service-desk",
        "crm.sales.deal-won",
        2,
        41,
    )
    assert (letter.event_type, letter.event_id, letter.key) == ("deal.won", "e-9", "deal-1")
    assert letter.headers["traceparent"] == "00-abc"
    assert "value" not in letter.summary()


def test_unreadable_bytes_and_missing_headers_never_raise() -> None:
    for value in (None, b"", b"\xff\xfe", b"[1, 2]", b"[" * 5000, b'{"event_type": 3}'):
        letter = dead_letter("leads", _record(value))
        assert (letter.event_type, letter.event_id) == (None, None)
    bare = dead_letter("leads", Record(0, 1, None, b"x", []))
    assert (bare.reason, bare.source_partition, bare.key) == ("unknown", None, None)


def test_reasons_are_counted_per_department() -> None:
    letters = [
        dead_letter("sales", _record(b"{}", "malformed")),
        dead_letter("sales", _record(b"{}", "malformed")),
        dead_letter("sales", _record(b"{}", "wrong_source")),
        dead_letter("leads", _record(b"{}", "too_large")),
    ]
    assert reasons(letters) == {"leads": {"too_large": 1}, "sales": {"malformed": 2, "wrong_source": 1}}


def test_progress_bar_draws_and_ends_full() -> None:
    stream = io.StringIO()
    progress = Progress("reading", 4, stream, width=8)
    progress.advance()
    assert stream.getvalue().endswith("\rreading [##......] 1/4")
    progress.advance(10)  # never past the total
    progress.finish()
    assert stream.getvalue().endswith("\rreading [########] 4/4\n")
    empty = io.StringIO()
    Progress("nothing", 0, empty, width=4).finish()
    assert empty.getvalue().endswith("[####] 0/0\n")


def test_age_of_the_oldest_event() -> None:
    now = datetime(2026, 12, 5, 4, 0, tzinfo=UTC)
    naive = datetime(2026, 12, 5, 3, 59, tzinfo=UTC).replace(tzinfo=None)  # as PyMongo returns it
    assert _age(naive, now) == ("2026-12-05T03:59:00+00:00", 60.0)
    assert _age("2026-12-05T03:00:00+00:00", now)[1] == 3600.0
    assert _age(None, now) == (None, None)
    assert _age("yesterday", now) == ("yesterday", None)


def test_a_replay_selection_holds_every_criterion_given() -> None:
    from crm_platform.ops_replay import Selection

    letter = dead_letter("service-desk", _record(b'{"event_type": "deal.won", "event_id": "e-9"}'))
    assert Selection().matches(letter)
    assert Selection(reasons=frozenset({"schema_invalid"}), topics=frozenset({"crm.sales.deal-won"})).matches(
        letter
    )
    assert Selection(event_ids=frozenset({"e-9"}), groups=frozenset({"service-desk"})).matches(letter)
    assert Selection(from_offset=7, to_offset=7, partition=0).matches(letter)
    assert not Selection(reasons=frozenset({"malformed"})).matches(letter)
    assert not Selection(event_ids=frozenset({"e-1"})).matches(letter)
    assert not Selection(groups=frozenset({"sales"})).matches(letter)
    assert not Selection(from_offset=8).matches(letter)
    assert not Selection(to_offset=6).matches(letter)


def test_a_replayed_record_keeps_its_headers_but_the_dead_letter_ones_and_names_its_group() -> None:
    from crm_platform.dead_letters import REPLAY_FOR, REPLAYED_FROM, replay_target, skips_replay
    from crm_platform.ops_replay import replay_headers, why_not

    record = _record(b"{}")
    headers = replay_headers(record, "service-desk", "crm.dlq.service-desk[0]@7")
    assert headers == [
        ("traceparent", b"00-abc"),
        (REPLAY_FOR, b"service-desk"),
        (REPLAYED_FROM, b"crm.dlq.service-desk[0]@7"),
    ]
    assert replay_target(headers) == "service-desk"
    assert not skips_replay(headers, "service-desk")
    assert skips_replay(headers, "analytics")
    assert not skips_replay([("traceparent", b"00-abc")], "analytics"), "an ordinary record"
    # A replayed record dead-lettered again and replayed once more carries one mark only.
    again = replay_headers(Record(0, 1, None, b"{}", headers), "service-desk", "x")
    assert [k for k, _ in again].count(REPLAY_FOR) == 1
    assert why_not(dead_letter("service-desk", record)) is None
    no_source = Record(0, 1, None, b"{}", [("dlq_reason", b"malformed")])
    assert why_not(dead_letter("service-desk", no_source)) == "no source topic in its headers"
