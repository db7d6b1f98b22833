"""``Sort.after_in_range``: what ``after`` selects, as a range the index bounds plus the ties."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from crm_platform.paging import BadCursor, Sort, index_specs

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


def test_a_then_field_orders_the_ties_before_the_id() -> None:
    """``then``: the field's ties by a second field, then ``_id``; its value travels in the cursor."""
    score = Sort("score", "handoff.score", then="received_at")
    assert score.spec == [("handoff.score", -1), ("received_at", -1), ("_id", -1)]
    cursor = score.cursor_of({"_id": "b", "handoff": {"score": 5}, "received_at": WHEN})
    ties: list[dict[str, object]] = [
        {"received_at": {"$lt": WHEN}},
        {"received_at": WHEN, "_id": {"$lt": "b"}},
    ]
    assert score.after_in_range(cursor) == {
        "handoff.score": {"$lte": 5},
        "$or": [{"handoff.score": {"$lt": 5}}, *ties],
    }
    assert score.after(cursor)["$or"][:2] == [{"handoff.score": 5} | tie for tie in ties]
    with pytest.raises(BadCursor):  # a cursor without the tie's value (one of the order before it)
        score.after(Sort("score", "handoff.score").cursor_of({"_id": "b", "handoff": {"score": 5}}))


def test_index_specs_put_the_then_field_before_the_id() -> None:
    orders = [Sort("newest", "received_at"), Sort("oldest", "received_at", descending=False),
              Sort("score", "handoff.score", then="received_at")]  # fmt: skip
    assert index_specs("list", [("status",)], orders) == [
        (
            [("status", 1), ("handoff.score", -1), ("received_at", -1), ("_id", -1)],
            "list_status_handoff_score_received_at",
        ),
        ([("status", 1), ("received_at", -1), ("_id", -1)], "list_status_received_at"),
    ]
