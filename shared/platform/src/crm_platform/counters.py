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
"""

from __future__ import annotations

from dataclasses import dataclass
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
