"""The action-item use cases, and the queue that runs them in a service's unit of work.

The use cases (:func:`receive`, :func:`act`, :func:`escalate_overdue`) take a
repository and an ``emit`` callable, so unit tests run them against
:class:`~crm_platform.action_items.repository.InMemoryActionItems` with no I/O;
:class:`ActionItemQueue` runs them inside :meth:`crm_platform.mongo.Store.transaction`
(the item and its outcome event commit together).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from crm_contracts import Envelope, Event, utcnow
from crm_contracts.events.action_items import RAISED_BY_DEPARTMENT, UPDATED_BY_DEPARTMENT

from crm_platform.action_items.domain import ActionItem, View
from crm_platform.action_items.repository import ActionItemRepository, MongoActionItems
from crm_platform.clock import Clock, simulated_now, system_clock, to_millis
from crm_platform.consumer import Handler
from crm_platform.errors import NotFound
from crm_platform.mongo import Store, Tx

log = logging.getLogger("crm.action_items")

Emit = Callable[[Event, str | None], Any]  # (event, correlation id: the customer's journey)
OnChange = Callable[[Tx, ActionItem], Awaitable[None]]


@dataclass(frozen=True)
class Accept:
    pass


@dataclass(frozen=True)
class Assign:
    assignee: str


@dataclass(frozen=True)
class Complete:
    note: str | None = None


@dataclass(frozen=True)
class Decline:
    reason: str


Command = Accept | Assign | Complete | Decline


def clock_lag(now: datetime) -> timedelta:
    """How far the clock ``now`` was read from lags the real one: zero live, the demo clock's
    lag while ``make run``'s history plays (the item keeps it: see the domain's docstring)."""
    return max(timedelta(0), utcnow() - now) if simulated_now() is not None else timedelta(0)


def item_from_event(event: Any, received_at: datetime, journey_id: str | None = None) -> ActionItem:
    """The queue's item from an ``action_item.raised_for_*`` event (any version-1 shape)."""
    return ActionItem(
        item_id=event.item_id,
        department=str(event.department),
        title=event.title,
        details=event.details,
        due_at=event.due_at,
        account_id=event.account_id,
        account_name=event.account_name,
        source=event.source.model_dump(mode="json"),
        raised_by=event.raised_by,
        raised_at=event.raised_at,
        received_at=received_at,
        assignee=event.owner,
        journey_id=journey_id,
    )


def outcome_event(item: ActionItem) -> Event:
    """The ``action_item.updated_by_<department>`` event for the item's latest step."""
    step = item.last_step
    model = UPDATED_BY_DEPARTMENT[item.department]
    return model(
        item_id=item.item_id,
        department=item.department,
        account_id=item.account_id,
        status=step.status,
        assignee=step.assignee,
        reason=step.reason,
        acted_by=step.by,
        automatic=step.automatic,
        escalated_to=item.escalated_to if step.automatic else None,
        raised_at=item.raised_at,
        due_at=item.due_at,
        acted_at=step.at,
    )


async def receive(
    repo: ActionItemRepository,
    event: Any,
    now: datetime,
    journey_id: str | None = None,
    *,
    lag: timedelta = timedelta(0),
) -> ActionItem | None:
    """Store a raised item in the queue (received at ``now``, on a clock ``lag`` behind the real
    one); None if it is already there (a re-sent copy)."""
    item = item_from_event(event, now, journey_id).on_clock(lag)
    return item if await repo.add(item) else None


def apply(item: ActionItem, command: Command, by: str, now: datetime) -> ActionItem:
    match command:
        case Accept():
            return item.accept(by, now)
        case Assign(assignee=assignee):
            return item.assign(assignee, by, now)
        case Complete(note=note):
            return item.complete(by, now, note)
        case Decline(reason=reason):
            return item.decline(by, reason, now)


async def act(
    repo: ActionItemRepository,
    emit: Emit,
    item_id: str,
    command: Command,
    by: str,
    now: datetime,
    *,
    escalate_to: str | None = None,
    lag: timedelta = timedelta(0),
) -> ActionItem:
    """A member's step at ``now`` (a clock ``lag`` behind the real one). With ``escalate_to``, an
    item overdue by then and not escalated yet is escalated at its due date first."""
    item = await repo.get(item_id)
    if item is None:
        raise NotFound(f"no action item {item_id}", item_id=item_id)
    if escalate_to is not None and (late := item.escalated_before(escalate_to, now)) is not item:
        emit(outcome_event(late), late.journey_id)
        item = late
    changed = apply(item, command, by, now).on_clock(lag)
    await repo.save(changed)
    emit(outcome_event(changed), changed.journey_id)
    return changed


async def escalate_overdue(
    repo: ActionItemRepository, emit: Emit, now: datetime, *, to: str, limit: int = 100
) -> list[ActionItem]:
    """Every item overdue on its own clock at the real time ``now`` and not escalated yet goes to
    the department's manager (``to``), at the item's own time."""
    escalated = []
    for item in await repo.due_for_escalation(now, limit):
        changed = item.escalate(to, item.own_time(now))
        await repo.save(changed)
        emit(outcome_event(changed), changed.journey_id)
        escalated.append(changed)
    return escalated


def raised_handlers(
    department: str, *, clock: Clock = system_clock, on_change: OnChange | None = None
) -> dict[str, Handler]:
    """The consumer handler storing ``action_item.raised_for_<department>`` in the queue.

    Needs no store (the consumer's transaction is passed in), so a service can build its
    subscription before its runtime.
    """

    async def on_raised(tx: Tx, event: Any, envelope: Envelope) -> None:
        now = to_millis(clock())
        await receive_in(tx, event, now, on_change, journey_id=envelope.correlation_id, lag=clock_lag(now))

    return {RAISED_BY_DEPARTMENT[department].event_type: on_raised}


async def receive_in(
    tx: Tx,
    event: Any,
    now: datetime,
    on_change: OnChange | None = None,
    *,
    journey_id: str | None = None,
    lag: timedelta | None = None,
) -> ActionItem | None:
    """Store a raised item in the transaction's database (consumer, or customer success' own
    raise); ``lag`` None: the lag of the clock ``now`` was read from (:func:`clock_lag`)."""
    lag = clock_lag(now) if lag is None else lag
    item = await receive(MongoActionItems(tx.db, tx.session), event, now, journey_id, lag=lag)
    if item is not None and on_change is not None:
        await on_change(tx, item)
    return item


def _emitter(tx: Tx) -> Emit:
    def emit(event: Event, journey_id: str | None) -> None:
        tx.emit(event, correlation_id=journey_id)

    return emit


class ActionItemQueue:
    """One department's queue, over its service's own database.

    ``manager`` names who overdue items escalate to (a role, e.g. ``sales_manager``);
    ``on_change`` runs in the same transaction after each change (customer success
    uses it to show its own queue's outcomes on the account).
    """

    def __init__(
        self,
        store: Store,
        department: str,
        *,
        manager: str,
        clock: Clock = system_clock,
        on_change: OnChange | None = None,
    ) -> None:
        if department not in UPDATED_BY_DEPARTMENT:
            raise ValueError(f"unknown department {department!r}; known: {sorted(UPDATED_BY_DEPARTMENT)}")
        self.store = store
        self.department = department
        self.manager = manager
        self.clock = clock
        self.on_change = on_change

    def consumer_handlers(self) -> dict[str, Handler]:
        """The platform consumer's handler for this department's ``action_item.raised_for_*``."""
        return raised_handlers(self.department, clock=self.clock, on_change=self.on_change)

    def now(self) -> datetime:
        return to_millis(self.clock())

    async def act(self, item_id: str, command: Command, by: str) -> ActionItem:
        now = self.now()
        lag = clock_lag(now)

        async def work(tx: Tx) -> ActionItem:
            repo = MongoActionItems(tx.db, tx.session)
            changed = await act(
                repo, _emitter(tx), item_id, command, by, now, escalate_to=self.manager, lag=lag
            )
            if self.on_change is not None:
                await self.on_change(tx, changed)
            return changed

        return await self.store.transaction(work)

    async def get(self, item_id: str) -> ActionItem:
        item = await MongoActionItems(self.store.db).get(item_id)
        if item is None:
            raise NotFound(f"no action item {item_id}", item_id=item_id)
        return item

    async def in_view(self, view: View, *, assignee: str | None = None, limit: int = 100) -> list[ActionItem]:
        return await MongoActionItems(self.store.db).in_view(view, self.now(), assignee=assignee, limit=limit)

    async def escalate_overdue(self, limit: int = 100) -> list[ActionItem]:
        """One round of the job: judged at the real time (``self.clock`` outside any demo
        request), each item against its own clock."""
        now = self.now()

        async def work(tx: Tx) -> list[ActionItem]:
            repo = MongoActionItems(tx.db, tx.session)
            escalated = await escalate_overdue(repo, _emitter(tx), now, to=self.manager, limit=limit)
            if self.on_change is not None:
                for item in escalated:
                    await self.on_change(tx, item)
            return escalated

        return await self.store.transaction(work)

    def escalation_job(self, every_seconds: float) -> Callable[[], Coroutine[Any, Any, None]]:
        """A runtime background job: escalate overdue items every ``every_seconds``."""

        async def escalate_overdue_items() -> None:
            while True:
                # Wait first: a starting service has its consumer and relay to bring up.
                await asyncio.sleep(every_seconds)
                try:
                    escalated = await self.escalate_overdue()
                    if escalated:
                        log.info("%d overdue %s action items escalated", len(escalated), self.department)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - the job outlives a failed round (database away): retry next round
                    log.warning("action item escalation failed (%s); retrying", exc)

        return escalate_overdue_items
