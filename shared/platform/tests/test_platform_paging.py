"""``Sort.after_in_range``: what ``after`` selects, as a range the index bounds plus the ties."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from crm_platform.paging import BadCursor, Sort

WHEN = datetime(2026, 12, 5, tzinfo=UTC)


def test_after_in_range_bounds_the_field_and_filters_its_ties() -> None:
    newest, oldest = Sort("newest", "received_at"), Sort("oldest", "received_at", descending=False)
    down = newest.after_in_range(newest.cursor_of({"_id": "b", "received_at": WHEN}))
    ties = [{"received_at": {"$lt": WHEN}}, {"_id": {"$lt": "b"}}]
    assert down == {"received_at": {"$lte": WHEN}, "$or": ties}
    up = oldest.after_in_range(oldest.cursor_of({"_id": "b", "received_at": WHEN}))
    ties = [{"received_at": {"$gt": WHEN}}, {"_id": {"$gt": "b"}}]
    assert up == {"received_at": {"$gte": WHEN}, "$or": ties}


def test_after_in_range_on_a_missing_value_is_after() -> None:
    score = Sort("score", "handoff.score")
    cursor = score.cursor_of({"_id": "b", "handoff": {}})
    assert score.after_in_range(cursor) == score.after(cursor)
    with pytest.raises(BadCursor):
        Sort("newest", "received_at").after_in_range(cursor)
