"""PyMongo's async round trip in the calling task (crm_platform.mongo_wire): no task per write
and two per reply, the same timeouts, and a cancelled connection interrupts the reply awaited
on it at once (it waited for a poll every 0.5 s before).

The tasks are counted through the loop's task factory, against the real mongod; the rest uses
a connection whose reply never comes."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pymongo.asynchronous.pool as async_pool
import pymongo.network_layer as network_layer
import pytest
from crm_platform import mongo_wire
from crm_platform.mongo import connect
from pymongo.pool_shared import _CancellationContext


async def _tasks_per_find(client: Any) -> float:
    """Tasks the loop created per ``find_one`` by ``_id`` (after a warm-up)."""
    coll = client[f"t_wire_{uuid.uuid4().hex[:8]}"]["docs"]
    await coll.insert_one({"_id": 1})
    await coll.find_one({"_id": 1})
    loop = asyncio.get_running_loop()
    made: list[int] = []
    previous = loop.get_task_factory()

    def counting(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        made.append(1)
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(counting)
    try:
        for _ in range(10):
            assert await coll.find_one({"_id": 1}) == {"_id": 1}
    finally:
        loop.set_task_factory(previous)
    await client.drop_database(coll.database.name)
    return len(made) / 10


@pytest.mark.integration
async def test_a_round_trip_makes_no_task(mongodb_uri: str) -> None:
    client = connect(mongodb_uri, "wire-test")  # installs the lean round trip
    try:
        assert async_pool.async_receive_message is mongo_wire.receive_message
        assert async_pool.async_sendall is mongo_wire.sendall
        # PyMongo's own: 2 (the read, the poller), 3 with a socket timeout (the write's wait_for)
        assert await _tasks_per_find(client) == 0
    finally:
        await client.close()


class _Silent:
    """A connection whose reply never comes (``read`` waits until cancelled)."""

    def __init__(self, timeout: float | None) -> None:
        self.cancel_context = _CancellationContext()
        self.gettimeout = timeout
        self.get_conn = self
        self.conn = self
        self.reading = asyncio.Event()

    async def read(self, request_id: int | None, max_message_size: int) -> tuple[bytes, int]:
        self.reading.set()
        await asyncio.get_running_loop().create_future()
        raise AssertionError("never answered")


@pytest.fixture(autouse=True)
def installed() -> None:
    assert mongo_wire.install()


async def test_a_cancelled_connection_interrupts_the_reply_awaited_on_it() -> None:
    conn = _Silent(timeout=None)  # no deadline: PyMongo's poller was the only way out
    reply = asyncio.ensure_future(mongo_wire.receive_message(conn, 1))
    await asyncio.wait_for(conn.reading.wait(), 10)
    conn.cancel_context.cancel()  # the pool's reset of in-use connections, or their close
    with pytest.raises(network_layer._OperationCancelled):
        await asyncio.wait_for(reply, 10)
    assert conn.cancel_context.cancelled
    with pytest.raises(network_layer._OperationCancelled):  # and stays cancelled
        await mongo_wire.receive_message(conn, 2)


async def test_a_reply_past_its_deadline_is_the_timeout_it_was() -> None:
    with pytest.raises(TimeoutError, match="timed out"):
        await asyncio.wait_for(mongo_wire.receive_message(_Silent(timeout=0.01), 1), 10)


async def test_cancelling_the_task_from_elsewhere_is_a_cancellation() -> None:
    conn = _Silent(timeout=None)
    reply = asyncio.ensure_future(mongo_wire.receive_message(conn, 1))
    await asyncio.wait_for(conn.reading.wait(), 10)
    reply.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reply
    assert not conn.cancel_context.cancelled
    conn.cancel_context.cancel()  # nothing reads on it any more: only the flag
    assert conn.cancel_context.cancelled


async def test_the_write_is_made_in_the_calling_task() -> None:
    written: list[bytes] = []

    class Protocol:
        async def write(self, message: bytes) -> None:
            written.append(message)

    await mongo_wire.sendall(Protocol(), b"\x01\x02")
    assert written == [b"\x01\x02"]
