"""Action items customer success raises and follows, against the in-memory fakes (no broker, no db).

The integration suite (test_service_desk_action_items.py) runs the same paths through the
broker, with sales' and marketing's outcomes arriving on their topics.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from crm_contracts import envelope_for
from crm_contracts.events.action_items import (
    ActionItemRaisedForCustomerSuccessV1,
    ActionItemRaisedForSalesV1,
    ActionItemStatus,
    ActionItemUpdatedBySalesV1,
    OwningDepartment,
    SourceKind,
)
from crm_contracts.events.common import Money
from crm_contracts.events.sales import DealWonV1, Product
from crm_platform.action_items.handlers import Accept, apply
from crm_platform.actor import Actor
from crm_platform.clock import ManualClock
from crm_platform.consumer import DeadLetter
from crm_platform.errors import NotFound, RuleViolation
from crm_platform.uow import FakeUnitOfWork
from service_desk.domain.accounts import account_from_deal
from service_desk.domain.config import Priority, SlaTarget
from service_desk.domain.raised_items import Raise, RaisedSource
from service_desk.domain.tickets import open_ticket
from service_desk.fakes import FakeSuccessUnit
from service_desk.handlers import action_items

T0 = datetime(2026, 4, 1, 9, 0, tzinfo=UTC)
REP = Actor.of("u-rita", ["service_rep"])
CARLA = Actor.of("u-carla", ["customer_success_manager"])
OTTO = Actor.of("u-otto", ["customer_success_manager"])
Uow = FakeUnitOfWork[FakeSuccessUnit]


def make_uow() -> Uow:
    unit = FakeSuccessUnit()
    for n, csm in ((1, "u-carla"), (2, "u-dora")):
        deal = DealWonV1(
            deal_id=f"deal-{n}",
            account_name=f"Acme {n}",
            contacts=[],
            products=[Product(sku="CRM", name="CRM", quantity=1, unit_price=1000.0)],
            value=Money(amount=1000.0),
            commitments=[],
            sales_owner="u-sam",
            won_at=T0,
        )
        account = account_from_deal(
            deal, account_id=f"acc-{n}", csm=csm, checklist=["Kickoff"], now=T0, journey_id=f"j-{n}"
        )
        unit.accounts.items[account.account_id] = account
    target = SlaTarget(first_response_hours=1, resolution_hours=8)
    unit.tickets.items.append(
        open_ticket(
            ticket_id="t-2",
            account_id="acc-2",
            account_name="Acme 2",
            subject="s",
            request="r",
            priority=Priority.HIGH,
            opened_by="u-rita",
            assignee="u-dora",
            target=target,
            now=T0,
        )
    )
    ids = (f"id-{n}" for n in itertools.count(1))
    return FakeUnitOfWork(unit, clock=ManualClock(T0), new_id=lambda: next(ids))


def ask(department: str = "sales", source: RaisedSource | None = None, due_days: int = 7) -> Raise:
    return Raise(
        department=department,
        title="  Fix the invoice layout ",
        details=None,
        owner=None,
        due_at=T0 + timedelta(days=due_days),
        source=source or RaisedSource(kind=str(SourceKind.ACCOUNT_NOTE), record_id="note-1"),
    )


async def test_an_item_for_sales_is_recorded_and_handed_off_on_the_customer_s_journey() -> None:
    uow = make_uow()
    item = await action_items.raise_item(uow, "acc-1", ask(), CARLA)
    assert (item.title, item.status, item.account_name, item.raised_by) == (
        "Fix the invoice layout",
        "open",
        "Acme 1",
        "u-carla",
    )
    [event] = uow.unit.emitted(ActionItemRaisedForSalesV1)
    assert (event.item_id, event.department, event.title) == (
        item.item_id,
        OwningDepartment.SALES,
        item.title,
    )
    assert uow.unit.events[0].correlation_id == "j-1"
    assert uow.unit.action_queue.items == {}  # sales keeps it in its own queue, not here


async def test_customer_success_s_own_item_goes_straight_into_its_own_queue() -> None:
    uow = make_uow()
    item = await action_items.raise_item(uow, "acc-1", ask("customer-success"), REP)
    assert uow.unit.emitted(ActionItemRaisedForCustomerSuccessV1)
    queued = uow.unit.action_queue.items[item.item_id]
    assert (queued.department, queued.journey_id) == ("customer-success", "j-1")


async def test_raising_is_refused_for_the_past_an_unseen_account_or_another_account_s_ticket() -> None:
    uow = make_uow()
    with pytest.raises(RuleViolation, match="due_at must lie in the future"):
        await action_items.raise_item(uow, "acc-1", ask(due_days=-1), CARLA)
    with pytest.raises(NotFound, match="no account acc-2"):
        await action_items.raise_item(uow, "acc-2", ask(), CARLA)  # Dora's account
    ticket = RaisedSource(kind=str(SourceKind.TICKET), record_id="t-2")
    with pytest.raises(RuleViolation, match="is not a ticket of account acc-1"):
        await action_items.raise_item(uow, "acc-1", ask(source=ticket), REP)
    assert await action_items.raise_item(uow, "acc-2", ask(source=ticket), REP)
    assert len(uow.unit.raised.items) == 1


def outcome(
    item_id: str, status: ActionItemStatus, at: datetime, **fields: object
) -> ActionItemUpdatedBySalesV1:
    return ActionItemUpdatedBySalesV1(
        item_id=item_id,
        department=OwningDepartment.SALES,
        account_id="acc-1",
        status=status,
        acted_by="u-sam",
        raised_at=T0,
        due_at=T0 + timedelta(days=7),
        acted_at=at,
        **fields,
    )


async def deliver(uow: Uow, event: ActionItemUpdatedBySalesV1) -> None:
    await action_items.on_outcome(uow, event, envelope_for(event, source="sales", correlation_id="j-1"))


async def test_sales_steps_show_on_the_item_in_time_order_whatever_order_they_arrive_in() -> None:
    uow = make_uow()
    item = await action_items.raise_item(uow, "acc-1", ask(), CARLA)
    done = outcome(item.item_id, ActionItemStatus.DONE, T0 + timedelta(hours=3), assignee="u-sam")
    accepted = outcome(item.item_id, ActionItemStatus.ACCEPTED, T0 + timedelta(hours=1), assignee="u-sam")
    escalated = outcome(
        item.item_id,
        ActionItemStatus.ESCALATED,
        T0 + timedelta(hours=2),
        automatic=True,
        escalated_to="sales_manager",
    )
    await deliver(uow, done)
    await deliver(uow, accepted)  # a re-sent older step arrives late
    await deliver(uow, escalated)
    stored = uow.unit.raised.items[item.item_id]
    assert [s.status for s in stored.history] == ["accepted", "escalated", "done"]
    assert (stored.status, stored.closed_at) == ("done", T0 + timedelta(hours=3))
    assert (stored.escalated_at, stored.escalated_to) == (T0 + timedelta(hours=2), "sales_manager")


async def test_an_outcome_for_an_item_never_raised_here_is_dead_lettered() -> None:
    uow = make_uow()
    with pytest.raises(DeadLetter) as refused:
        await deliver(uow, outcome("nope", ActionItemStatus.ACCEPTED, T0))
    assert refused.value.reason == "unknown_action_item"


async def test_a_step_in_customer_success_s_own_queue_shows_on_the_raised_item() -> None:
    uow = make_uow()
    item = await action_items.raise_item(uow, "acc-1", ask("customer-success"), REP)
    queued = uow.unit.action_queue.items[item.item_id]
    await action_items.own_queue_changed(uow, queued)  # just received: nothing to show
    assert uow.unit.raised.items[item.item_id].history == []
    accepted = apply(queued, Accept(), "u-carla", T0 + timedelta(hours=1))
    await action_items.own_queue_changed(uow, accepted)
    stored = uow.unit.raised.items[item.item_id]
    assert (stored.status, [s.by for s in stored.history]) == ("accepted", ["u-carla"])
