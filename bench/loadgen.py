"""The bench's own HTTP load generator: keep-alive HTTP/1.1 over asyncio streams.

The bench runs on the same two cores as the platform it measures, so the client's own CPU per
request is taken from the services. httpx costs about 1.7 ms of CPU per request (its pool
bookkeeping, header models, anyio streams); this client writes a request built from a fixed
head and reads the answer by its ``Content-Length`` (about a fifth of that). It only speaks what
the bench needs: one request at a time per connection, answers with a ``Content-Length``
(uvicorn's JSON answers), reconnect when the server closes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit


class HttpError(Exception):
    """The connection failed or the answer was not HTTP/1.1 with a Content-Length."""


class Connection:
    """One keep-alive connection to ``base_url``; ``request`` sends one request and reads its answer."""

    def __init__(self, base_url: str, headers: Mapping[str, str]) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"only plain http is supported: {base_url}")
        self.host = parts.hostname
        self.port = parts.port or 80
        fixed = {"host": parts.netloc, "connection": "keep-alive", **headers}
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in fixed.items()).encode("latin-1")
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        """(status, body) of one request; ``body`` is sent as JSON. Reconnects once if the kept
        connection was closed by the server before this request."""
        payload = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        head = f"{method} {path} HTTP/1.1\r\n".encode() + self._fixed
        if body is not None:
            head += b"content-type: application/json\r\n"
        head += b"content-length: %d\r\n\r\n" % len(payload)
        for attempt in (0, 1):
            fresh = self._writer is None
            if fresh:
                await self._connect()
            try:
                return await self._exchange(head + payload)
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                await self.close()
                if fresh or attempt:
                    raise HttpError(type(exc).__name__) from exc
        raise AssertionError("unreachable")

    async def _connect(self) -> None:
        try:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        except OSError as exc:
            raise HttpError(type(exc).__name__) from exc

    async def _exchange(self, message: bytes) -> tuple[int, bytes]:
        assert self._reader is not None
        assert self._writer is not None
        self._writer.write(message)
        head = await self._reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status_line = lines[0].split(" ", 2)
        if len(status_line) < 2 or not status_line[0].startswith("HTTP/1."):
            raise HttpError(f"not an HTTP/1.x answer: {lines[0]!r}")
        length: int | None = None
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                close = True
            elif name == "transfer-encoding":
                raise HttpError("chunked answers are not supported by the bench's client")
        if length is None:
            raise HttpError("an answer without Content-Length")
        content = await self._reader.readexactly(length) if length else b""
        if close:
            await self.close()
        return int(status_line[1]), content

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass
