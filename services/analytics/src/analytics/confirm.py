"""Ack folded events once their changelog writes are stored: one broker wait for many events.

The worker's agent folds one event after another (the folds are synchronous and in memory)
and hands each event here (with the futures of any writes of its own). A background task takes
everything handed over so far, calls ``flush`` at that moment (``analytics.changelog``: the
changelog records of every key those folds changed, once each), waits for all of it at once,
then acks those events: faust commits a source offset only once it and every offset before
it on its partition are acked, so an offset is never committed before the facts it produced
are in the changelog. While one wait is with the broker the next events are folded, so the
round trip is paid per batch rather than per event, and a batch is as large as what arrived
during the previous wait (up to ``max_pending`` events; then the agent waits for room).

A failed write is raised in the agent at its next event (faust restarts the actor); the
events of the failed batch and of any later one are never acked, so they come again and fold
to the same facts (every fold is a join: rewriting a fact changes nothing). Events handed
over but not yet confirmed when the agent stops are not acked either, for the same reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Generic, TypeVar

E = TypeVar("E")


class ChangelogConfirmer(Generic[E]):
    """Events folded and waiting for their changelog writes; acked in batches (module doc)."""

    def __init__(
        self,
        ack: Callable[[E], Awaitable[Any]] | None,
        *,
        max_pending: int,
        flush: Callable[[], asyncio.Future[Any]] | None = None,
        ack_all: Callable[[Sequence[E]], Awaitable[Any]] | None = None,
    ) -> None:
        if (ack is None) == (ack_all is None):
            raise ValueError("give either ack (each event) or ack_all (a batch's events at once)")
        self._ack = ack
        self._ack_all = ack_all
        # Called at the moment a batch is taken: starts the writes of everything folded so far
        # (analytics.changelog) and gives their future, awaited with the batch's other writes.
        self._flush = flush
        self.max_pending = max_pending
        self._events: list[E] = []
        self._writes: list[asyncio.Future[Any]] = []
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.failure: BaseException | None = None
        self.batches = 0  # waits for the broker so far (diagnostics and tests)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        """Stop waiting; what is not confirmed yet stays unacked (it comes again)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def add(self, event: E, writes: Iterable[asyncio.Future[Any]]) -> None:
        """Hand over one folded event and its writes; raises a previous batch's failure."""
        self.raise_failure()
        self._events.append(event)
        self._writes.extend(writes)
        await self._handed_over()

    async def add_many(self, events: Sequence[E]) -> None:
        """Hand over several folded events at once (a fetched batch's: ``analytics.batches``),
        with no writes of their own; raises a previous batch's failure."""
        self.raise_failure()
        if events:
            self._events.extend(events)
            await self._handed_over()

    async def _handed_over(self) -> None:
        self._idle.clear()
        self._wake.set()
        if len(self._events) >= self.max_pending:
            self._room.clear()
            await self._room.wait()
            self.raise_failure()

    async def settled(self) -> None:
        """Wait until every event handed over is acked, or never will be here (a batch failed,
        or the confirmer stopped: those events come again). Never raises the failure."""
        task = self._task
        if task is None or task.done():
            return
        idle = asyncio.ensure_future(self._idle.wait())
        try:
            await asyncio.wait((idle, task), return_when=asyncio.FIRST_COMPLETED)
        finally:
            idle.cancel()

    async def drained(self) -> None:
        """Wait until every event handed over is acked (or a batch failed: raised)."""
        await self._idle.wait()
        self.raise_failure()

    def raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            events, writes = self._events, self._writes
            self._events, self._writes = [], []
            self._room.set()
            try:
                if self._flush is not None:
                    writes.append(self._flush())
                if writes:
                    self.batches += 1
                    await asyncio.gather(*writes)
                if self._ack_all is not None:
                    await self._ack_all(events)
                else:
                    assert self._ack is not None
                    for event in events:
                        await self._ack(event)
            except Exception as exc:  # noqa: BLE001 - raised in the agent (module doc)
                self.failure = exc
                self._room.set()
                self._idle.set()
                return
            if not self._events:
                self._idle.set()
