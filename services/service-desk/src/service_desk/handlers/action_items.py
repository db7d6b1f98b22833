"""Voice of the customer becomes work: customer success raises action items and follows them.

Anyone in customer service/success raises an action item for the department that owns the
fix (``POST /action-items``): marketing and sales receive it as a handoff into their own
queue; customer success' own items go straight into its own queue here (the shared
``crm_platform.action_items``, under ``/action-queue``). Every step the owning department
takes comes back (``action_item.updated_by_<department>``, or the own queue's change) and is
kept on the raised item (``domain/raised_items.py``), so the customer's record shows it.
"""

from __future__ import annotations

from crm_contracts import Envelope
from crm_contracts.events.action_items import ActionItemUpdatedByCustomerSuccessV1
from crm_platform.action_items.domain import ActionItem
from crm_platform.action_items.handlers import clock_lag, outcome_event, receive
from crm_platform.actor import Actor
from crm_platform.clock import now_millis
from crm_platform.consumer import DeadLetter
from crm_platform.errors import NotFound

from service_desk.domain.access import can_see_account
from service_desk.domain.accounts import Account
from service_desk.domain.raised_items import Outcome, Raise, RaisedItem, RaisedStep, require_future
from service_desk.repository import SuccessUnit, SuccessUoW


async def _account(unit: SuccessUnit, account_id: str, actor: Actor) -> Account:
    """The account items are raised for: 404 when unknown or not one the actor's CSM role covers."""
    account = await unit.accounts.get(account_id)
    if account is None or not can_see_account(actor.roles, actor.user_id, account.csm):
        raise NotFound(f"no account {account_id}", field="account_id")
    return account


async def raise_item(uow: SuccessUoW, account_id: str, ask: Raise, actor: Actor) -> RaisedItem:
    """Raise an item for the owning department (``action_item.raised_for_<department>``)."""
    now = now_millis(uow.clock)
    require_future(ask.due_at, now)
    item_id = uow.new_id()

    async def work(unit: SuccessUnit) -> RaisedItem:
        account = await _account(unit, account_id, actor)
        ticket = await unit.tickets.get(ask.source.record_id)
        item = RaisedItem.raise_for(
            ask,
            account,
            item_id=item_id,
            ticket_account=ticket.account_id if ticket else None,
            by=actor.user_id,
            now=now,
        )
        await unit.raised.add(item)
        event = item.raised()
        unit.emit(event, correlation_id=account.journey_id)
        if item.kept_here:
            await receive(unit.action_queue, event, now, account.journey_id, lag=clock_lag(now))
        return item

    return await uow.run(work)


async def check_account(uow: SuccessUoW, account_id: str, actor: Actor) -> None:
    """404 unless the actor may see the account's raised items."""

    async def work(unit: SuccessUnit) -> None:
        await _account(unit, account_id, actor)

    await uow.run(work)


async def on_outcome(uow: SuccessUoW, event: Outcome, envelope: Envelope) -> None:
    """``action_item.updated_by_<department>``: show the owning department's step on the item."""

    async def work(unit: SuccessUnit) -> None:
        item = await unit.raised.get(event.item_id)
        if item is None:
            raise DeadLetter("unknown_action_item", f"no action item {event.item_id} was raised here")
        item.record(RaisedStep.of(event))
        await unit.raised.save(item)

    await uow.run(work)


async def own_queue_changed(uow: SuccessUoW, queued: ActionItem) -> None:
    """Customer success' own queue changed an item: its step shows on the raised item like the others'."""
    if not queued.history:
        return  # just received: the raise itself wrote the raised record
    event = outcome_event(queued)
    assert isinstance(event, ActionItemUpdatedByCustomerSuccessV1)

    async def work(unit: SuccessUnit) -> None:
        item = await unit.raised.get(queued.item_id)
        if item is not None:
            item.record(RaisedStep.of(event))
            await unit.raised.save(item)

    await uow.run(work)
