"""A lean keep-alive HTTP/1.1 client for forwarding: one pool of connections per upstream.

httpx was a third of the gateway's CPU per forwarded request (docs/performance.md, seventh
and eighth sessions): its pool (httpcore) scans every connection, with a ``poll()`` per idle
one, on each request, and each request passes through its models, anyio streams and h11.
Here a request takes the most recently used idle connection (a list, no scan), writes its
head and body in one piece and reads the answer with httptools (the C parser uvicorn uses),
whole when small, streamed otherwise. Only what forwarding needs: a request body in memory
(uploads stream through httpx), no redirects, no cookies, no content decoding (the bytes go
through as the upstream sent them, ``Content-Encoding`` and all).

Failures name what went wrong, for the gateway's statuses: :class:`ConnectFailed` and
:class:`PoolFull` (503), :class:`TimedOut` (504), :class:`ProtocolFailed` (502). A kept
connection the upstream closed while idle is noticed before use (its reader saw the end);
one it closed just as the request went out (no byte of an answer) is retried once on a new
connection, as httpx's transport did.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httptools

READ_BYTES = 64 * 1024


class Http1Error(Exception):
    """Why a request to an upstream failed; ``kind`` is httpx's name for it (the gateway's log
    field ``upstream_error`` and its error messages keep the names they had)."""

    kind = "HTTPError"


class ConnectFailed(Http1Error):
    """No connection could be made (refused, unreachable, or not within the connect timeout)."""

    kind = "ConnectError"


class PoolFull(Http1Error):
    """Every allowed connection stayed busy for the whole connect timeout."""

    kind = "PoolTimeout"


class TimedOut(Http1Error):
    """The upstream did not answer (or take the request) within the timeout."""

    kind = "ReadTimeout"


class ProtocolFailed(Http1Error):
    """The connection broke mid-answer, or the answer was not HTTP/1.x."""

    kind = "RemoteProtocolError"


class _Stale(Exception):
    """A kept connection ended before any byte of the answer: the request may go on a new one."""


@dataclass
class _Answer:
    """httptools' callbacks land here."""

    headers: list[tuple[str, str]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    head_done: bool = False
    complete: bool = False
    keep_alive: bool = False  # read while the head is parsed (the parser forgets it at the end)
    parser: httptools.HttpResponseParser | None = None

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.head_done = True
        self.keep_alive = self.parser is not None and self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = time.monotonic()

    def usable(self, now: float, expiry: float) -> bool:
        return not self.reader.at_eof() and not self.writer.is_closing() and now - self.idle_since < expiry

    def close(self) -> None:
        self.writer.close()


class Response:
    """An answer's status and headers; its body is :meth:`read` whole or :meth:`stream`-ed once.
    :meth:`aclose` gives the connection back (or closes it when the body was not read to its end)."""

    def __init__(
        self, pool: Pool, conn: _Connection, parser: httptools.HttpResponseParser, answer: _Answer
    ) -> None:
        self.status_code = parser.get_status_code()
        self.headers = answer.headers
        self._pool, self._conn, self._parser, self._answer = pool, conn, parser, answer
        self._closed = False

    async def stream(self) -> AsyncIterator[bytes]:
        answer = self._answer
        try:
            while True:
                chunks, answer.chunks = answer.chunks, []
                for chunk in chunks:
                    yield chunk
                if answer.complete:
                    break
                if not await self._pool.read_into(self._conn, self._parser):
                    raise ProtocolFailed("the connection closed mid-answer")
        finally:
            await self.aclose()  # an answer not read to its end closes its connection

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.stream()])

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            reusable = self._answer.complete and self._answer.keep_alive
            self._answer.parser = None  # no cycle left for the collector
            self._pool.release(self._conn, reusable)


class Pool:
    """Connections to one upstream ``host:port``: at most ``max_connections`` at once, idle
    ones kept up to ``keepalive_expiry`` seconds and reused most recent first."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        max_connections: int,
        timeout: float,
        connect_timeout: float,
        keepalive_expiry: float = 30.0,
    ) -> None:
        self.host, self.port = host, port
        self.timeout, self.connect_timeout, self.keepalive_expiry = timeout, connect_timeout, keepalive_expiry
        self.max_connections = max_connections
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Connection] = []
        self.opened = 0  # connections made so far (tests)

    async def request(self, head: bytes, body: bytes) -> Response:
        """Send ``head`` (request line and headers, ending in an empty line) and ``body``; the
        answer once its head has arrived. Its connection stays taken until ``aclose``."""
        await self._take_slot()
        try:
            conn, kept = self._kept() or (await self._connect(), False)
            try:
                return await self._exchange(conn, head, body)
            except _Stale:
                if not kept:
                    raise ProtocolFailed("the connection closed before an answer") from None
            try:  # the kept connection was closed as the request went out: once more, on a new one
                return await self._exchange(await self._connect(), head, body)
            except _Stale:
                raise ProtocolFailed("the connection closed before an answer") from None
        except BaseException:
            self._slots.release()
            raise

    async def _take_slot(self) -> None:
        if not self._slots.locked():  # a slot is free: taken at once, nothing to time
            await self._slots.acquire()
            return
        # asyncio.timeout (a timer) rather than wait_for (a task): only a request that waits.
        try:
            async with asyncio.timeout(self.connect_timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise PoolFull(f"all {self.max_connections} connections stayed busy") from None

    def _kept(self) -> tuple[_Connection, bool] | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.usable(now, self.keepalive_expiry):
                return conn, True
            conn.close()
        return None

    async def _connect(self) -> _Connection:
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(self.host, self.port, limit=READ_BYTES)
        except TimeoutError:
            failed = ConnectFailed("connect timed out")
            failed.kind = "ConnectTimeout"
            raise failed from None
        except OSError as exc:
            raise ConnectFailed(type(exc).__name__) from None
        self.opened += 1
        return _Connection(reader, writer)

    async def _exchange(self, conn: _Connection, head: bytes, body: bytes) -> Response:
        answer = _Answer()
        parser = answer.parser = httptools.HttpResponseParser(answer)
        try:
            if len(body) < READ_BYTES:
                conn.writer.write(head + body)  # one write: one segment for a small request
            else:
                conn.writer.writelines([head, body])
            async with asyncio.timeout(self.timeout):  # taking the request and answering its head
                await conn.writer.drain()
                first = True
                while not answer.head_done:
                    if not await self._read(conn, parser, stale_if_empty=first):
                        raise ProtocolFailed("the connection closed mid-answer")
                    first = False
        except TimeoutError:
            conn.close()
            raise TimedOut("no answer in time") from None
        except BaseException:
            conn.close()
            raise
        return Response(self, conn, parser, answer)

    async def read_into(self, conn: _Connection, parser: httptools.HttpResponseParser) -> bool:
        """Read what arrived of a body and parse it (within the timeout); False at the connection's end."""
        try:
            async with asyncio.timeout(self.timeout):
                return await self._read(conn, parser)
        except TimeoutError:
            raise TimedOut("no more of the answer in time") from None

    async def _read(
        self, conn: _Connection, parser: httptools.HttpResponseParser, *, stale_if_empty: bool = False
    ) -> bool:
        try:
            data = await conn.reader.read(READ_BYTES)
        except OSError as exc:
            raise (_Stale() if stale_if_empty else ProtocolFailed(type(exc).__name__)) from None
        if not data:
            if stale_if_empty:
                raise _Stale()
            return False
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:
            raise ProtocolFailed(f"not an HTTP/1.x answer: {exc}") from None
        return True

    def release(self, conn: _Connection, reusable: bool) -> None:
        if reusable and not conn.writer.is_closing():
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()
        self._slots.release()

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
