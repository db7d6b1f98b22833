"""The unit of work handlers run in: repositories + emitted events, committed together.

A handler's state change and the events it emits commit in ONE MongoDB transaction
(the outbox, :meth:`crm_platform.mongo.Store.transaction`); inside a consumer the
processed-event ledger entry and the handoff receipt join that same transaction.
Handlers never see the transaction itself: they call ``uow.run(work)`` and ``work``
gets the service's *unit* (its repositories and ``emit``).

- :class:`MongoUnitOfWork` opens a transaction per ``run`` (retried on transient
  errors, so ``work`` has no side effect outside its unit);
- :func:`bind_event` adapts an event handler to the platform consumer, whose
  transaction already holds the ledger entry: the handler's ``uow.run`` joins it;
- :class:`FakeUnitOfWork` runs ``work`` on in-memory fakes, and restores them and
  drops the emitted events if ``work`` raises, as an aborted transaction would.

``uow.clock`` and ``uow.new_id`` are the handler's time and ids.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from crm_contracts import Envelope, Event

from crm_platform import shredding
from crm_platform.batch import Preload, with_preload
from crm_platform.clock import Clock, system_clock
from crm_platform.consumer import Handler
from crm_platform.ids import IdFactory, new_id
from crm_platform.mongo import Store, Tx, commands_may_overlap, side_by_side

T = TypeVar("T")
U = TypeVar("U")
U_co = TypeVar("U_co", covariant=True)
EV = TypeVar("EV", bound=Event)


class UnitOfWork(Protocol[U_co]):
    @property
    def clock(self) -> Clock: ...

    @property
    def new_id(self) -> IdFactory: ...

    async def run(self, work: Callable[[U_co], Awaitable[T]]) -> T: ...


EventHandler = Callable[[UnitOfWork[U], Any, Envelope], Awaitable[None]]


class MongoUnit:
    """Base of a service's Mongo unit: its repositories are built over ``tx``; events go to the outbox."""

    def __init__(self, tx: Tx) -> None:
        self.tx = tx

    def emit(self, event: Event, *, correlation_id: str | None = None, batched: bool = False) -> None:
        self.tx.emit(event, correlation_id=correlation_id, batched=batched)

    def emit_all(
        self, events: Iterable[Event], *, correlation_id: str | None = None, batched: bool = False
    ) -> None:
        """``batched``: the events may share one outbox row with their batched neighbours
        (:meth:`crm_platform.mongo.Tx.emit`): a bulk path's many events, one row."""
        for event in events:
            self.emit(event, correlation_id=correlation_id, batched=batched)

    async def keys_beside(self, write: Awaitable[T], events: Iterable[Event]) -> T:
        """``write`` (a command of this transaction, which has begun: one of its commands was
        answered), and beside it the person keys that ``events``, emitted next, will be sealed
        with (crm_platform.shredding.keys_ahead): their lookup is then not a round trip of its
        own after the emit, between it and the outbox insert."""
        people = shredding.people_to_seal(self.tx.source, events)
        if not people:
            return await write
        ahead = shredding.keys_ahead(self.tx.db, self.tx, people)
        if not commands_may_overlap(self.tx.session):
            result = await write
            await ahead
            return result
        done: T = (await side_by_side(write, ahead))[0]
        return done


@dataclass(frozen=True)
class Emitted:
    event: Event
    correlation_id: str | None


class FakeUnit:
    """Base of a service's in-memory unit: emitted events are kept in ``events``."""

    def __init__(self) -> None:
        self.events: list[Emitted] = []

    def emit(self, event: Event, *, correlation_id: str | None = None, batched: bool = False) -> None:
        self.events.append(Emitted(event, correlation_id))

    def emit_all(
        self, events: Iterable[Event], *, correlation_id: str | None = None, batched: bool = False
    ) -> None:
        for event in events:
            self.emit(event, correlation_id=correlation_id, batched=batched)

    async def keys_beside(self, write: Awaitable[T], events: Iterable[Event]) -> T:
        """``write``: in memory there are no keys to look up (:meth:`MongoUnit.keys_beside`)."""
        return await write

    def emitted(self, event_type: type[EV]) -> list[EV]:
        """The events of one type emitted (and committed) so far."""
        return [e.event for e in self.events if isinstance(e.event, event_type)]


@dataclass
class MongoUnitOfWork(Generic[U]):
    """``open_unit(tx)`` builds the service's unit over a transaction.

    ``store`` may be attached after construction: a service's consumer handlers
    (:func:`bind_event`) need the unit of work before the runtime that owns the
    store exists, and only ``run`` needs the store.
    """

    open_unit: Callable[[Tx], U]
    store: Store | None = None
    clock: Clock = system_clock
    new_id: IdFactory = new_id

    async def run(self, work: Callable[[U], Awaitable[T]]) -> T:
        if self.store is None:
            raise RuntimeError("MongoUnitOfWork.run before a store was attached")

        async def in_tx(tx: Tx) -> T:
            return await work(self.open_unit(tx))

        return await self.store.transaction(in_tx)

    def joining(self, tx: Tx) -> JoinedUnitOfWork[U]:
        """A unit of work whose ``run`` works inside ``tx`` (a transaction someone else commits)."""
        return JoinedUnitOfWork(self.open_unit(tx), self.clock, self.new_id)


@dataclass
class JoinedUnitOfWork(Generic[U]):
    unit: U
    clock: Clock = system_clock
    new_id: IdFactory = new_id

    async def run(self, work: Callable[[U], Awaitable[T]]) -> T:
        return await work(self.unit)


def bind_event(
    uow: MongoUnitOfWork[U], handler: EventHandler[U], *, preload: Preload | None = None
) -> Handler:
    """The platform consumer's handler for ``handler``: same transaction as the ledger entry.
    ``preload``: the loads its batch will ask for, started beside the event's other reads
    (``crm_platform.batch.with_preload``)."""

    async def handle(tx: Tx, event: Any, envelope: Envelope) -> None:
        await handler(uow.joining(tx), event, envelope)

    handle.__name__ = getattr(handler, "__name__", "handle")
    handle.__doc__ = handler.__doc__
    return handle if preload is None else with_preload(handle, preload)


@dataclass
class FakeUnitOfWork(Generic[U]):
    """Runs handlers on in-memory fakes; a ``work`` that raises leaves them as they were."""

    unit: U
    clock: Clock = system_clock
    new_id: IdFactory = new_id
    commits: int = field(default=0)

    async def run(self, work: Callable[[U], Awaitable[T]]) -> T:
        before = copy.deepcopy(vars(self.unit))
        try:
            result = await work(self.unit)
        except BaseException:
            vars(self.unit).clear()
            vars(self.unit).update(before)
            raise
        self.commits += 1
        return result
