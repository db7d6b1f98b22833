"""crm_platform.counters against the real mongod: concurrent callers get distinct turns."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from crm_platform.counters import RoundRobinCounter
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
