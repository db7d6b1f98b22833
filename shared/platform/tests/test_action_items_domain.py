"""The shared action-item queue's rules and use cases, against the in-memory fake (no I/O)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from crm_contracts import Event
from crm_contracts.events.action_items import (
    RAISED_BY_DEPARTMENT,
    ActionItemUpdatedByMarketingV1,
    ActionItemUpdatedBySalesV1,
)
from crm_platform.action_items.domain import ActionItem, Status, View
from crm_platform.action_items.handlers import (
    Accept,
    Assign,
    Complete,
    Decline,
    act,
    escalate_overdue,
    receive,
)
from crm_platform.action_items.repository import InMemoryActionItems, from_doc, to_doc
from crm_platform.errors import Conflict, NotFound, RuleViolation

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def raised(
    department: str = "sales", item_id: str = "ai-1", due: timedelta = timedelta(days=7), **kw: Any
) -> Any:
    fields: dict[str, Any] = {
        "item_id": item_id,
        "department": department,
        "title": "Call the customer about the missing export",
        "due_at": T0 + due,
        "account_id": "acct-1",
        "account_name": "Lovelace Analytics",
        "source": {"kind": "survey", "record_id": "srv-1", "excerpt": "Export still missing"},
        "raised_by": "csm-cara",
        "raised_at": T0,
        **kw,
    }
    return RAISED_BY_DEPARTMENT[department](**fields)


def collect(into: list[Event]) -> Callable[[Event, str | None], None]:
    return lambda event, journey_id: into.append(event)


async def queue_with(*events: Any) -> InMemoryActionItems:
    repo = InMemoryActionItems()
    for e in events:
        assert await receive(repo, e, T0 + timedelta(seconds=1)) is not None
    return repo


async def test_a_raised_item_lands_open_in_the_queue_with_its_owner_as_assignee() -> None:
    repo = await queue_with(raised(owner="rep-ria"))
    item = await repo.get("ai-1")
    assert item is not None
    assert item.status == Status.OPEN
    assert item.assignee == "rep-ria"
    assert item.source["kind"] == "survey"
    assert item.received_at == T0 + timedelta(seconds=1)
    assert [i.item_id for i in await repo.in_view(View.OPEN, T0)] == ["ai-1"]


async def test_a_re_sent_raise_is_stored_once() -> None:
    repo = await queue_with(raised())
    assert await receive(repo, raised(title="changed"), T0) is None
    item = await repo.get("ai-1")
    assert item is not None
    assert item.title == "Call the customer about the missing export"


async def test_each_step_emits_the_owning_departments_outcome_event() -> None:
    repo = await queue_with(raised())
    emitted: list[Event] = []
    await act(repo, collect(emitted), "ai-1", Accept(), "rep-ria", T0 + timedelta(hours=1))
    await act(repo, collect(emitted), "ai-1", Assign("rep-rob"), "mgr-mona", T0 + timedelta(hours=2))
    done = await act(
        repo, collect(emitted), "ai-1", Complete("called, export shipped"), "rep-rob", T0 + timedelta(hours=3)
    )
    assert [type(e) for e in emitted] == [ActionItemUpdatedBySalesV1] * 3
    assert [(e.status, e.acted_by, e.assignee) for e in emitted] == [  # type: ignore[attr-defined]
        ("accepted", "rep-ria", None),
        ("assigned", "mgr-mona", "rep-rob"),
        ("done", "rep-rob", "rep-rob"),
    ]
    assert done.first_action_at == T0 + timedelta(hours=1)
    assert done.closed_at == T0 + timedelta(hours=3)
    assert [i.item_id for i in await repo.in_view(View.CLOSED, T0)] == ["ai-1"]
    assert await repo.in_view(View.OPEN, T0) == []


async def test_a_decline_needs_a_reason_and_carries_it() -> None:
    repo = await queue_with(raised("marketing"))
    emitted: list[Event] = []
    with pytest.raises(RuleViolation) as refused:
        await act(repo, collect(emitted), "ai-1", Decline("  "), "mk-mia", T0)
    assert refused.value.details == {"field": "reason"}
    await act(repo, collect(emitted), "ai-1", Decline("not ours: product roadmap"), "mk-mia", T0)
    assert isinstance(emitted[0], ActionItemUpdatedByMarketingV1)
    assert emitted[0].status == "declined"
    assert emitted[0].reason == "not ours: product roadmap"


async def test_a_closed_item_cannot_change_and_an_unknown_one_is_not_found() -> None:
    repo = await queue_with(raised())
    emitted: list[Event] = []
    await act(repo, collect(emitted), "ai-1", Complete(), "rep-ria", T0)
    for command in (Accept(), Assign("rep-rob"), Complete(), Decline("late")):
        with pytest.raises(Conflict):
            await act(repo, collect(emitted), "ai-1", command, "rep-ria", T0)
    with pytest.raises(NotFound):
        await act(repo, collect(emitted), "nope", Accept(), "rep-ria", T0)
    assert len(emitted) == 1


async def test_an_accepted_item_cannot_be_accepted_again() -> None:
    repo = await queue_with(raised())
    await act(repo, lambda e, j: None, "ai-1", Accept(), "rep-ria", T0)
    with pytest.raises(Conflict):
        await act(repo, lambda e, j: None, "ai-1", Accept(), "rep-rob", T0)


async def test_overdue_items_escalate_to_the_manager_once_and_closed_ones_never() -> None:
    repo = await queue_with(
        raised(item_id="late", due=timedelta(days=1)),
        raised(item_id="later", due=timedelta(days=5)),
        raised(item_id="done-late", due=timedelta(days=1)),
    )
    await act(repo, lambda e, j: None, "done-late", Complete(), "rep-ria", T0)
    now = T0 + timedelta(days=2)
    assert [i.item_id for i in await repo.in_view(View.OVERDUE, now)] == ["late"]
    emitted: list[Event] = []
    escalated = await escalate_overdue(repo, collect(emitted), now, to="sales_manager")
    assert [i.item_id for i in escalated] == ["late"]
    event = emitted[0]
    assert isinstance(event, ActionItemUpdatedBySalesV1)
    assert (event.status, event.automatic, event.escalated_to, event.acted_by) == (
        "escalated",
        True,
        "sales_manager",
        "system",
    )
    assert await escalate_overdue(repo, collect(emitted), now + timedelta(hours=1), to="sales_manager") == []
    assert [i.item_id for i in await repo.in_view(View.ESCALATED, now)] == ["late"]
    late = await repo.get("late")
    assert late is not None
    assert late.status == Status.OPEN
    assert late.first_action_at is None


def test_an_item_survives_its_storage_form() -> None:
    item = ActionItem(
        item_id="ai-9",
        department="sales",
        title="t",
        due_at=T0,
        account_id="a",
        account_name="n",
        source={"kind": "ticket", "record_id": "tk-1"},
        raised_by="u",
        raised_at=T0,
        received_at=T0,
    ).accept("rep", T0)
    assert from_doc(to_doc(item)) == item


def test_the_raised_event_must_name_its_own_department() -> None:
    payload = {**raised("sales").model_dump(), "department": "marketing"}
    with pytest.raises(ValueError, match="department must be 'sales'"):
        RAISED_BY_DEPARTMENT["sales"](**payload)


async def test_an_item_made_on_a_lagging_clock_is_judged_on_its_own_clock() -> None:
    """The demo history: an item raised and worked 200 days in the past, judged by the job on
    the real time, escalates only once the real time passes its due date on its own clock."""
    lag = timedelta(days=200)  # the real time is T0 + 200 days
    repo = InMemoryActionItems()
    assert await receive(repo, raised(due=timedelta(days=7)), T0, lag=lag) is not None
    emitted: list[Event] = []
    assert await escalate_overdue(repo, collect(emitted), T0 + lag, to="sales_manager") == []
    # Worked a day later on its clock (which the real time followed for a day meanwhile).
    await act(repo, collect(emitted), "ai-1", Accept(), "rep-ria", T0 + timedelta(days=1), lag=lag)
    assert await escalate_overdue(repo, collect(emitted), T0 + lag + timedelta(days=5), to="m") == []
    real = T0 + lag + timedelta(days=7, minutes=1)
    [escalated] = await escalate_overdue(repo, collect(emitted), real, to="m")
    assert escalated.escalated_at == T0 + timedelta(days=7, minutes=1), "stamped at the item's own time"
    assert [getattr(e, "status", None) for e in emitted] == ["accepted", "escalated"]


async def test_a_step_on_an_overdue_item_not_escalated_yet_comes_after_its_escalation() -> None:
    repo = await queue_with(raised(item_id="late", due=timedelta(days=7)), raised(item_id="early"))
    emitted: list[Event] = []
    await act(repo, collect(emitted), "early", Complete(), "rep-ria", T0 + timedelta(days=6), escalate_to="m")
    await act(repo, collect(emitted), "late", Complete(), "rep-ria", T0 + timedelta(days=9), escalate_to="m")
    steps = [(getattr(e, "item_id", None), getattr(e, "status", None)) for e in emitted]
    assert steps == [("early", "done"), ("late", "escalated"), ("late", "done")]
    late = await repo.get("late")
    assert late is not None
    assert [(s.status, s.at, s.automatic) for s in late.history] == [
        ("escalated", T0 + timedelta(days=7), True),
        ("done", T0 + timedelta(days=9), False),
    ]
    assert await escalate_overdue(repo, collect(emitted), T0 + timedelta(days=30), to="m") == []
