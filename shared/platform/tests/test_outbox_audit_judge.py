"""The outbox audit's verdict on one published row (pure; the broker side is in
tests/reliability/test_outbox_audit.py)."""

from __future__ import annotations

from crm_platform.outbox_audit import Position, judge

AT = Position("crm.leads.events", 0, 10)


def test_the_record_at_the_acknowledged_position_with_the_rows_event_id_is_ok() -> None:
    assert judge("e1", AT, {10: "e1"}, start=0, end=11) == "ok"


def test_a_position_past_the_partitions_end_was_lost() -> None:
    assert judge("e1", AT, {}, start=0, end=10) == "lost"


def test_another_event_at_the_position_means_the_offset_was_reused_after_a_loss() -> None:
    assert judge("e1", AT, {10: "e2"}, start=0, end=20) == "lost"


def test_no_readable_record_at_a_position_inside_the_log_counts_as_lost() -> None:
    # A record without an event id header is not the row's event either.
    assert judge("e1", AT, {10: None}, start=0, end=20) == "lost"
    assert judge("e1", AT, {}, start=0, end=20) == "lost"


def test_a_position_retention_already_removed_cannot_be_checked() -> None:
    assert judge("e1", AT, {}, start=11, end=20) == "expired"
