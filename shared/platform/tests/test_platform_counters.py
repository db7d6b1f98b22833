"""crm_platform.counters against the real mongod: concurrent callers get distinct turns."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from crm_platform.counters import RoundRobinCounter, TurnReservations
from crm_platform.mongo import connect

pytestmark = pytest.mark.integration


async def test_concurrent_takes_get_every_turn_once_and_peek_names_the_next(mongodb_uri: str) -> None:
    client = connect(mongodb_uri, "counters-test")
    db = client[f"t_counters_{uuid.uuid4().hex[:8]}"]
    counter = RoundRobinCounter("turns", collection="counters", field="n")
    try:
        await counter.seed(db)
        await counter.seed(db)  # idempotent
        turns = await asyncio.gather(*(counter.take(db) for _ in range(60)))
        assert sorted(turns) == list(range(60)), "each turn handed out exactly once"
        assert await counter.peek(db) == 60
        doc = await db["counters"].find_one({"_id": "turns"})
        assert doc == {"_id": "turns", "n": 60}
    finally:
        await client.drop_database(db.name)
        await client.close()


async def test_reservations_take_turns_n_at_a_time_and_hand_them_out_in_order(mongodb_uri: str) -> None:
    client = connect(mongodb_uri, "counters-test")
    db = client[f"t_counters_{uuid.uuid4().hex[:8]}"]
    counter = RoundRobinCounter("turns")
    try:
        assert list(await counter.take_many(db, 3)) == [0, 1, 2]
        batch = TurnReservations(counter)
        taken = [await batch.take(db, ahead=4)]  # reserves 3..6 in one increment
        assert await counter.peek(db) == 7
        assert batch.held() == 3
        alone = await counter.take(db)  # another caller meanwhile: the next free turn
        taken += [await batch.take(db, ahead=9) for _ in range(3)]  # the reserved ones first
        taken.append(await batch.take(db, ahead=1))  # then one more increment
        assert (taken, alone) == ([3, 4, 5, 6, 8], 7)
        with pytest.raises(ValueError):
            await counter.take_many(db, 0)
    finally:
        await client.drop_database(db.name)
        await client.close()
