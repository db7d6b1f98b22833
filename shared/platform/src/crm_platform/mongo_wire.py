"""PyMongo's async round trip without its two or three tasks per operation.

PyMongo 4.20's async pool sends each command with ``asyncio.wait_for(protocol.write(...))``
(with a socket timeout, a task around a write that never waits: ``PyMongoProtocol.write``
only hands the bytes to the transport) and reads each reply with two tasks under
``asyncio.wait``: the read, and a poller that wakes every 0.5 s to see whether the pool
cancelled the connection (``_CancellationContext``, set when the pool is reset with in-use
connections interrupted, or the connection closed); a timer each and a loop turn to cancel
the poller. About 15-65 us of a service's CPU per round trip out of 300-350 (a ``find_one``
by ``_id`` in a loop, docs/performance.md, "Fifteenth session, latency"), and a single
qualifying behaviour makes ten in leads before the relay's and sales' own.

:func:`install` replaces the two functions the pool calls (``pymongo.asynchronous.pool``'s
``async_sendall`` and ``async_receive_message``) with ones that do the same in the calling
task: the write is made at once; the reply is awaited under the same deadline (the operation's
CSOT deadline, else the socket timeout: ``TimeoutError("timed out")`` as before), and a
cancellation of the connection interrupts the wait at once instead of at the next poll: the
context's ``cancel`` (wrapped here) cancels the task reading on it, which then raises PyMongo's
``_OperationCancelled`` as the poller made it do. A cancellation of the task from elsewhere
propagates as before. The replies are unpacked by PyMongo's own table. Installed by
:func:`crm_platform.mongo.connect`, so in every service's process; a PyMongo whose pool no
longer calls these names keeps its own (``install`` returns False and the services run as before).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pymongo.asynchronous.pool as async_pool
import pymongo.network_layer as network_layer
from pymongo import _csot
from pymongo.errors import ProtocolError
from pymongo.pool_shared import _CancellationContext

# The task awaiting a reply on a connection, on its cancellation context.
_READER = "_crm_reader"
# Set on the context when its cancel() interrupted that task (not a cancellation from elsewhere).
_INTERRUPTED = "_crm_interrupted"

_original_cancel = _CancellationContext.cancel


def _cancel(context: _CancellationContext) -> None:
    """``_CancellationContext.cancel``, also interrupting the reply awaited on it."""
    _original_cancel(context)
    reader: asyncio.Task[Any] | None = getattr(context, _READER, None)
    if reader is not None and not reader.done():
        setattr(context, _INTERRUPTED, True)
        reader.cancel()


async def sendall(conn: Any, buf: bytes) -> None:
    """``network_layer.async_sendall`` without its task: ``PyMongoProtocol.write`` does not wait."""
    await conn.write(buf)


def _time_left(conn: Any) -> float | None:
    """The seconds the reply may take (as ``async_receive_message``): the CSOT deadline, else
    the socket timeout, else none."""
    if _csot.get_timeout():
        deadline: float | None = _csot.get_deadline()
    else:
        timeout = conn.conn.gettimeout
        deadline = time.monotonic() + timeout if timeout else None
    return None if deadline is None else max(deadline - time.monotonic(), 0)


async def receive_message(
    conn: Any, request_id: int | None, max_message_size: int = network_layer.MAX_MESSAGE_SIZE
) -> Any:
    """``network_layer.async_receive_message`` in the calling task; see the module."""
    context = conn.cancel_context
    if context.cancelled:
        raise network_layer._OperationCancelled("operation cancelled")
    task = asyncio.current_task()
    setattr(context, _READER, task)
    try:
        async with asyncio.timeout(_time_left(conn)):
            data, op_code = await conn.conn.get_conn.read(request_id, max_message_size)
    except TimeoutError as exc:
        raise TimeoutError("timed out") from exc  # asyncio's has no message
    except asyncio.CancelledError:
        if task is None or not getattr(context, _INTERRUPTED, False):
            raise
        task.uncancel()
        raise network_layer._OperationCancelled("operation cancelled") from None
    finally:
        setattr(context, _READER, None)
    try:
        unpack_reply = network_layer._UNPACK_REPLY[op_code]
    except KeyError:
        raise ProtocolError(
            f"Got opcode {op_code!r} but expected {network_layer._UNPACK_REPLY.keys()!r}"
        ) from None
    return unpack_reply(data)


def install() -> bool:
    """Use the lean round trip in this process's async clients (idempotent). False when this
    PyMongo's pool does not call the two functions it replaces (it is then left alone)."""
    if async_pool.async_receive_message is receive_message:
        return True
    if (
        async_pool.async_receive_message is not network_layer.async_receive_message
        or async_pool.async_sendall is not network_layer.async_sendall
        or not hasattr(network_layer, "_UNPACK_REPLY")
    ):
        return False
    _CancellationContext.cancel = _cancel  # type: ignore[method-assign,assignment]
    async_pool.async_sendall = sendall
    async_pool.async_receive_message = receive_message
    return True
