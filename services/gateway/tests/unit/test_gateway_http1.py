"""The gateway's lean upstream client (gateway.http1) against a small local HTTP/1.1 server:
connections kept and reused, answers whole or chunked, and each failure named for its status."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from gateway import http1

GET = b"GET /x HTTP/1.1\r\nhost: up\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok"
Answer = Callable[[int, asyncio.StreamWriter], Awaitable[bool]]  # (n-th on its connection) -> go on


@asynccontextmanager
async def server(answer: Answer) -> AsyncIterator[int]:
    """A server answering each request head with ``answer`` (n: the request's number on its
    connection); yields its port."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        count = 0
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                count += 1
                if not await answer(count, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield srv.sockets[0].getsockname()[1]
    finally:
        srv.close()


def pool(port: int, **options: float) -> http1.Pool:
    settings = {"max_connections": 4, "timeout": 2.0, "connect_timeout": 1.0, **options}
    return http1.Pool("127.0.0.1", port, **settings)  # type: ignore[arg-type]


async def ok(_: int, writer: asyncio.StreamWriter) -> bool:
    writer.write(OK)
    return True


async def test_a_kept_connection_serves_the_next_requests() -> None:
    async with server(ok) as port:
        up = pool(port)
        for _ in range(5):
            r = await up.request(GET, b"")
            assert (r.status_code, await r.read()) == (200, b"ok")
            assert ("content-type", "text/plain") in r.headers
        assert up.opened == 1
        await up.aclose()


async def test_a_chunked_answer_is_read_whole_and_the_connection_kept() -> None:
    async def chunked(_: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        return True

    async with server(chunked) as port:
        up = pool(port)
        for _ in range(2):
            r = await up.request(GET, b"")
            assert [chunk async for chunk in r.stream()] == [b"abc", b"de"]
        assert up.opened == 1
        await up.aclose()


async def test_an_answer_that_closes_is_not_reused_and_an_idle_close_is_noticed() -> None:
    async def once(_: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(OK.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n", 1))
        return False

    async with server(once) as port:
        up = pool(port)
        for _ in range(3):
            r = await up.request(GET, b"")
            assert await r.read() == b"ok"
        assert up.opened == 3
        await up.aclose()


async def test_a_request_on_a_connection_closed_as_it_went_out_goes_again_on_a_new_one() -> None:
    async def first_only(n: int, writer: asyncio.StreamWriter) -> bool:
        if n == 1:
            writer.write(OK)
        return n == 1  # the second request on that connection: closed without an answer

    async with server(first_only) as port:
        up = pool(port)
        assert await (await up.request(GET, b"")).read() == b"ok"
        assert await (await up.request(GET, b"")).read() == b"ok"
        assert up.opened == 2
        await up.aclose()


async def test_failures_are_named_for_the_gateway_s_statuses() -> None:
    hold = asyncio.Event()

    async def silent(_: int, writer: asyncio.StreamWriter) -> bool:
        await hold.wait()
        return False

    async def garbage(_: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"SMTP ready\r\n\r\n")
        return False

    async with server(silent) as port:
        with pytest.raises(http1.TimedOut):
            await pool(port, timeout=0.2).request(GET, b"")
        hold.set()
    async with server(garbage) as port:
        with pytest.raises(http1.ProtocolFailed):
            await pool(port).request(GET, b"")
    async with server(ok) as port:
        full = pool(port, max_connections=1, connect_timeout=0.2)
        held = await full.request(GET, b"")  # its answer not read: the one connection stays taken
        with pytest.raises(http1.PoolFull):
            await full.request(GET, b"")
        await held.aclose()
    with pytest.raises(http1.ConnectFailed):
        await pool(port).request(GET, b"")  # that server is gone


async def test_a_free_slot_is_taken_without_a_timer_and_a_wait_for_one_is_timed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    timers: list[float] = []
    timeout = asyncio.timeout

    def counted(delay: float | None) -> asyncio.Timeout:
        timers.append(delay or 0.0)
        return timeout(delay)

    monkeypatch.setattr(http1.asyncio, "timeout", counted)
    async with server(ok) as port:
        up = pool(port, max_connections=1, connect_timeout=0.3)
        first = await up.request(GET, b"")
        assert timers.count(0.3) == 1  # the connect's (the slot's would be another 0.3)
        assert 2.0 in timers  # the answer's head
        timers.clear()
        with pytest.raises(http1.PoolFull):  # the one slot taken: the wait is timed
            await up.request(GET, b"")
        assert timers == [0.3]
        await first.aclose()
        timers.clear()
        second = await up.request(GET, b"")  # on the kept connection, the slot free again
        assert (second.status_code, await second.read()) == (200, b"ok")
        assert 0.3 not in timers  # neither a slot's timer nor a connect
        assert 2.0 in timers
        await up.aclose()
