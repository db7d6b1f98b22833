"""The outbox relay's lease: renewed on a timer, not on every loop; one publisher at a time.

Against the real mongod; time is the relay's monotonic clock, stepped by the test
(no sleeps, no timed assertions).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from crm_platform.mongo import OUTBOX, connect
from crm_platform.outbox import LEASE, LEASE_SECONDS, OutboxRelay
from crm_platform.testing import eventually
from pymongo.asynchronous.database import AsyncDatabase

pytestmark = pytest.mark.integration


@pytest.fixture
async def db(mongodb_uri: str) -> AsyncIterator[AsyncDatabase[dict[str, Any]]]:
    client = connect(mongodb_uri, "outbox-lease-test")
    name = f"t_lease_{uuid.uuid4().hex[:8]}"
    try:
        yield client[name]
    finally:
        await client.drop_database(name)
        await client.close()


async def test_the_lease_is_written_once_per_third_of_its_term_and_kept_from_others(
    db: AsyncDatabase[dict[str, Any]],
) -> None:
    clock = [1000.0]
    relay = OutboxRelay(db, bootstrap="unused", service="lease-test")
    other = OutboxRelay(db, bootstrap="unused", service="lease-test")
    writes: list[str] = []
    for r in (relay, other):
        r.monotonic = lambda: clock[0]
        original = r._hold_lease

        async def counted(original: Any = original, owner: str = r.owner) -> bool:
            writes.append(owner)
            return bool(await original())

        r._hold_lease = counted  # type: ignore[method-assign]

    assert await relay._lease_held()
    for _ in range(50):  # fifty publish loops within a third of the term: no lease write
        assert await relay._lease_held()
    assert writes == [relay.owner]

    assert not await other._lease_held(), "another replica cannot publish while the lease is held"
    clock[0] += LEASE_SECONDS / 3 + 0.01
    assert await relay._lease_held()
    assert writes == [relay.owner, other.owner, relay.owner], "renewed once the third has passed"
    doc = await db[LEASE].find_one({"_id": "relay"})
    assert doc is not None
    assert doc["owner"] == relay.owner


async def test_an_event_stored_by_another_replica_wakes_the_relay_without_its_poll(
    db: AsyncDatabase[dict[str, Any]],
) -> None:
    """The change stream on the outbox (OutboxRelay.watch_inserts): no poll, no notify."""
    relay = OutboxRelay(db, bootstrap="unused", service="watch-test", poll_seconds=3600)
    watching = asyncio.create_task(relay.watch_inserts())
    try:
        assert not relay._wake.is_set()

        async def woken() -> bool:
            # Inserted as another replica would (its own client, no notify in this process);
            # again on every poll, since the stream may open after the first insert.
            await db[OUTBOX].insert_one({"_id": uuid.uuid4().hex, "published": True})
            return relay._wake.is_set()

        assert await eventually(woken, what="the relay woken by the outbox's change stream")

        row = await db[OUTBOX].find_one({"published": True})
        assert row is not None
        relay._wake.clear()
        await db[OUTBOX].update_one({"_id": row["_id"]}, {"$set": {"published": False}})  # handed back

        async def woken_again() -> bool:
            return relay._wake.is_set()

        assert await eventually(woken_again, what="the relay woken by a row handed back to publish")
    finally:
        await relay.stop()
        await asyncio.wait_for(watching, timeout=10)  # a stop ends the stream's wait


def _gated_writes(relay: OutboxRelay, gate: asyncio.Event, writes: list[float]) -> None:
    """``relay``'s lease writes counted (the relay's clock at each), each held until ``gate``
    is set: a mongod slow to answer the lease's majority write."""
    original = relay._hold_lease

    async def gated() -> bool:
        writes.append(relay.monotonic())
        await gate.wait()
        return bool(await original())

    relay._hold_lease = gated  # type: ignore[method-assign]


async def test_a_renewal_due_is_written_beside_the_publishes_not_before_them(
    db: AsyncDatabase[dict[str, Any]],
) -> None:
    """Past half of the lease's trusted third, a publish loop renews it in a task of its own
    and goes on publishing; the renewal, once answered, moves the trust on from when it began."""
    clock = [1000.0]
    relay = OutboxRelay(db, bootstrap="unused", service="lease-aside-test")
    relay.monotonic = lambda: clock[0]
    gate, writes = asyncio.Event(), list[float]()
    _gated_writes(relay, gate, writes)
    gate.set()
    assert await relay._lease_held()  # the first renewal: in the loop (nothing held yet)
    first = await db[LEASE].find_one({"_id": "relay"})
    assert first is not None
    gate.clear()
    clock[0] += LEASE_SECONDS / 3 * 0.75  # within the trusted third, past its half
    for _ in range(5):  # the loops go on while the renewal waits for mongod; one renewal
        assert await asyncio.wait_for(relay._lease_held(), timeout=30)
    renewing = relay._renewing
    assert renewing is not None
    assert not renewing.done(), "the renewal is on its way beside the loop"
    assert writes == [1000.0, clock[0]]
    gate.set()
    await asyncio.wait_for(renewing, timeout=30)
    assert relay._renew_at == clock[0] + LEASE_SECONDS / 3, "trusted a third of the term from its start"
    doc = await db[LEASE].find_one({"_id": "relay"})
    assert doc is not None
    assert doc["owner"] == relay.owner
    assert doc["expires_at"] > first["expires_at"], "the lease itself was renewed"


async def test_a_lease_lost_or_checked_while_renewed_aside_is_not_trusted_past_it(
    db: AsyncDatabase[dict[str, Any]],
) -> None:
    """A renewal aside that finds the lease taken makes the next loop check it itself (and stop
    publishing); one that began before ``check_lease_now`` does not count as that check."""
    clock = [1000.0]
    relay = OutboxRelay(db, bootstrap="unused", service="lease-lost-test")
    relay.monotonic = lambda: clock[0]
    gate, writes = asyncio.Event(), list[float]()
    _gated_writes(relay, gate, writes)
    gate.set()
    assert await relay._lease_held()
    gate.clear()
    clock[0] += LEASE_SECONDS / 3 * 0.75
    assert await relay._lease_held()
    renewing = relay._renewing
    assert renewing is not None
    relay.check_lease_now()  # e.g. a stand-in took it over meanwhile: verify in the database
    gate.set()
    await asyncio.wait_for(renewing, timeout=30)
    assert relay._renew_at == 0.0, "a renewal that began before the check is not the check"
    assert await relay._lease_held()  # checked in the loop: still this relay's
    assert len(writes) == 3

    gate.clear()
    clock[0] += LEASE_SECONDS / 3 * 0.75
    assert await relay._lease_held()
    renewing = relay._renewing
    assert renewing is not None
    far = datetime.now(UTC) + timedelta(hours=1)
    await db[LEASE].update_one({"_id": "relay"}, {"$set": {"owner": "another replica", "expires_at": far}})
    gate.set()
    await asyncio.wait_for(renewing, timeout=30)
    assert not await relay._lease_held(), "the lease taken by another replica: no more publishing"
