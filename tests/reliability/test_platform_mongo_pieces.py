"""The shared pieces that touch MongoDB: the round-robin counter, the Mongo-only runtime, the unit of work."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from crm_contracts.events.sales import LeadAssignedV1
from crm_platform.clock import system_clock
from crm_platform.counters import RoundRobinCounter
from crm_platform.mongo import Tx
from crm_platform.runtime import MongoOnlyRuntime, ServiceRuntime
from crm_platform.settings import ServiceSettings
from crm_platform.uow import MongoUnit, MongoUnitOfWork, bind_event

pytestmark = pytest.mark.integration


async def test_the_counter_gives_each_concurrent_caller_its_own_turn(
    make_settings: Callable[..., ServiceSettings],
) -> None:
    runtime = ServiceRuntime(make_settings("counter-test"))
    counter = RoundRobinCounter("rr", field="turn")
    try:
        await counter.seed(runtime.db)
        await counter.seed(runtime.db)  # idempotent
        assert await counter.peek(runtime.db) == 0

        async def take(tx: Tx) -> int:
            return await counter.take(tx.db)

        turns = await asyncio.gather(*(runtime.store.transaction(take) for _ in range(12)))
        assert sorted(turns) == list(range(12))
        assert await counter.peek(runtime.db) == 12

        async def aborted(tx: Tx) -> None:
            await counter.take(tx.db)
            raise RuntimeError("rolled back")

        # Taken outside the transaction: an aborted one leaves its turn unused (skipped).
        with pytest.raises(RuntimeError):
            await runtime.store.transaction(aborted)
        assert await counter.peek(runtime.db) == 13
    finally:
        await runtime.client.close()


async def test_the_mongo_only_runtime_runs_jobs_hooks_and_is_ready_on_mongodb_alone(
    make_settings: Callable[..., ServiceSettings],
) -> None:
    calls: list[str] = []
    started = asyncio.Event()

    async def indexes(db: Any) -> None:
        calls.append("indexes")

    async def job() -> None:
        started.set()
        await asyncio.Event().wait()

    async def hook() -> None:
        calls.append("on_stop")

    # A broker address nothing listens on: readiness must not depend on it.
    runtime = MongoOnlyRuntime(
        make_settings("mongo-only-test", KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9"),
        indexes=indexes,
        background=[job],
        on_stop=[hook],
    )
    await runtime.start()
    await asyncio.wait_for(started.wait(), timeout=5)
    assert await runtime.check_ready() == {"mongodb": "ok"}
    await runtime.stop()
    assert calls == ["indexes", "on_stop"]
    assert not hasattr(runtime, "relay")


class _Unit(MongoUnit):
    async def put(self, key: str) -> None:
        await self.tx.db["things"].insert_one({"_id": key}, session=self.tx.session)


async def test_a_mongo_unit_of_work_commits_state_and_events_together(
    make_settings: Callable[..., ServiceSettings],
) -> None:
    runtime = ServiceRuntime(make_settings("uow-test"))
    uow = MongoUnitOfWork(_Unit, runtime.store, clock=system_clock)
    due = system_clock()
    try:

        async def work(unit: _Unit) -> None:
            await unit.put("a")
            unit.emit(LeadAssignedV1(lead_id="l-a", owner="u", response_due_at=due))

        async def fails(unit: _Unit) -> None:
            await unit.put("b")
            unit.emit(LeadAssignedV1(lead_id="l-b", owner="u", response_due_at=due))
            raise RuntimeError("abort")

        await uow.run(work)
        with pytest.raises(RuntimeError):
            await uow.run(fails)
        assert [d["_id"] async for d in runtime.db["things"].find({})] == ["a"]
        keys = [d["key"] async for d in runtime.db["outbox"].find({})]
        assert keys == ["l-a"]

        # Bound to a consumer's transaction, the handler's run joins it (no second transaction).
        async def handler(joined: Any, event: Any, envelope: Any) -> None:
            await joined.run(lambda unit: unit.put(event))

        bound = bind_event(uow, handler)

        async def consumer_tx(tx: Tx) -> None:
            await bound(tx, "c", None)  # type: ignore[arg-type]
            raise RuntimeError("the consumer's transaction aborts")

        with pytest.raises(RuntimeError):
            await runtime.store.transaction(consumer_tx)
        assert await runtime.db["things"].count_documents({"_id": "c"}) == 0
    finally:
        await runtime.client.close()
