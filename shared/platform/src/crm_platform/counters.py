"""The round-robin turn counter: one document, one behaviour under concurrency.

:meth:`RoundRobinCounter.take` increments the counter as its own single-document
write, **outside** the caller's transaction: every caller gets a distinct turn, and
transactions that assign people never write a shared document, so assignments
handled side by side (consumer partitions, concurrent requests) do not abort each
other with write conflicts. A transaction that is retried or never commits leaves
its turn unused: the rotation skips a position, nobody is given two items at once.

The increment is acknowledged once applied (``w=1``, no journal wait), not once
majority-committed and journaled like the records: the counter is the rotation's
position, not a record. Each ``$inc`` is atomic, so concurrent callers still get
distinct turns; what a crash or a failover can lose is the last few increments, and the
rotation then repeats those positions once (an uneven share for a moment, never an item
given twice). Waiting for the journal cost a journal flush per assigned item (several
ms each, one after another within a consumer partition): the slowest step of a handoff.

A consumer batch reserves its turns together (:class:`TurnReservations`, one per batch):
ONE ``$inc`` by the number of events still to come that need one, handed out in order,
so the rotation is the same as one by one. A turn reserved and not used (an event that
turned out not to need one, a batch that never commits) is a skipped position, as above.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError
from pymongo.write_concern import WriteConcern

Db = AsyncDatabase[dict[str, Any]]
_APPLIED = WriteConcern(w=1, j=False)  # acknowledged when applied: see the module


@dataclass(frozen=True)
class RoundRobinCounter:
    """``{_id: counter_id, <field>: n}`` in ``collection`` (names kept as each service stored them)."""

    counter_id: str
    collection: str = "counters"
    field: str = "value"

    async def take(self, db: Db) -> int:
        """The turn before this call; the counter moves on by one (no session: see the module)."""
        before = (
            await db[self.collection]
            .with_options(write_concern=_APPLIED)
            .find_one_and_update(
                {"_id": self.counter_id},
                {"$inc": {self.field: 1}},
                upsert=True,
                return_document=ReturnDocument.BEFORE,
            )
        )
        return int(before[self.field]) if before else 0

    async def take_many(self, db: Db, n: int) -> range:
        """``n`` consecutive turns in one increment (the counter moves on by ``n``)."""
        if n < 1:
            raise ValueError("take at least one turn")
        before = (
            await db[self.collection]
            .with_options(write_concern=_APPLIED)
            .find_one_and_update(
                {"_id": self.counter_id},
                {"$inc": {self.field: n}},
                upsert=True,
                return_document=ReturnDocument.BEFORE,
            )
        )
        first = int(before[self.field]) if before else 0
        return range(first, first + n)

    async def peek(self, db: Db) -> int:
        """The turn the next ``take`` returns."""
        doc = await db[self.collection].find_one({"_id": self.counter_id})
        return int(doc[self.field]) if doc else 0

    async def seed(self, db: Db) -> None:
        """Create the counter at 0 unless it exists (idempotent, safe for concurrent replicas)."""
        try:
            await db[self.collection].update_one(
                {"_id": self.counter_id}, {"$setOnInsert": {self.field: 0}}, upsert=True
            )
        except DuplicateKeyError:
            pass  # another replica seeded it at the same moment


@dataclass
class TurnReservations:
    """Turns of ``counter`` reserved for one consumer batch, handed out in order.

    :meth:`take` hands out the next reserved turn; when none is left it reserves
    ``ahead`` at once (how many of the batch's events still to come will need one, the
    caller's estimate). Keep one per batch (``crm_platform.batch.Batch.memo``): a turn
    reserved and never handed out is a skipped position of the rotation.
    """

    counter: RoundRobinCounter
    _free: deque[int] = field(default_factory=deque)

    async def take(self, db: Db, ahead: int = 1) -> int:
        if not self._free:
            self._free.extend(await self.counter.take_many(db, max(1, ahead)))
        return self._free.popleft()

    def held(self) -> int:
        """How many reserved turns wait to be handed out."""
        return len(self._free)
