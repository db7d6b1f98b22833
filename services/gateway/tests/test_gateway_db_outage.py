"""Integration (real mongod behind a TCP proxy we can cut): while the gateway's database is down,
requests keep being authenticated from the token and the in-memory revocation list; logins and
refreshes answer 503 with Retry-After, never 500 or a hang."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest_asyncio

PASSWORD = "admin-dev-password"


class TcpProxy:
    """Forwards a local port to mongod; ``cut()`` drops every connection and refuses new ones."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.server: asyncio.Server | None = None
        self.port = 0
        self.open = True
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> TcpProxy:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        self.open = False
        for w in self.writers:
            w.close()
        self.writers.clear()

    def restore(self) -> None:
        self.open = True

    async def stop(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest_asyncio.fixture(loop_scope="session")
async def proxy(mongodb_uri: str) -> AsyncIterator[TcpProxy]:
    host = urlsplit(mongodb_uri).netloc.split(",")[0]
    name, _, port = host.rpartition(":")
    p = await TcpProxy(name or "127.0.0.1", int(port)).start()
    yield p
    await p.stop()


async def _timed(call: Any) -> tuple[Any, float]:
    started = time.monotonic()
    result = await call
    return result, time.monotonic() - started


async def test_tokens_keep_working_and_logins_say_503_while_the_database_is_down(
    gateway: Any, helpers: Any, proxy: TcpProxy
) -> None:
    uri = f"mongodb://127.0.0.1:{proxy.port}/?directConnection=true"
    # Field names: the fixture starts from a model_dump, whose names win over aliases.
    async with gateway(mongodb_uri=uri, revocation_refresh_seconds=0.2) as client:
        login = await client.post("/auth/login", json={"username": "admin", "password": PASSWORD})
        tokens = login.json()
        admin = helpers.bearer(tokens["access_token"])
        logged_out = helpers.bearer(await helpers.login(client))
        assert (await client.post("/auth/logout", headers=logged_out)).status_code == 204

        proxy.cut()
        # Authenticated and forwarded from the signature and the cached list: no database read.
        r, took = await _timed(client.get("/api/analytics/summary", headers=admin))
        assert r.status_code == 200, r.text
        assert took < 2.0, f"took {took:.1f} s"
        assert (await client.get("/auth/me", headers=admin)).status_code == 200
        r = await client.get("/api/analytics/summary", headers=logged_out)
        assert r.status_code == 401, "the revocation list survives the outage"
        listed = (await client.get("/internal/revocations")).json()
        assert listed["tokens"], "services keep getting the list from memory"
        # What needs the database says so, with a time to come back, within the driver's deadline.
        for path, body in (
            ("/auth/login", {"username": "admin", "password": PASSWORD}),
            ("/auth/refresh", {"refresh_token": tokens["refresh_token"]}),
        ):
            r, took = await _timed(client.post(path, json=body))
            assert r.status_code == 503, (path, r.text)
            assert r.headers["retry-after"] == "5"
            assert r.json()["error"] == "service_unavailable"
            assert took < 10.0, f"{path} took {took:.1f} s"

        proxy.restore()
        from crm_platform.testing import eventually

        async def logged_in() -> bool:
            r = await client.post("/auth/login", json={"username": "admin", "password": PASSWORD})
            return r.status_code == 200

        await eventually(logged_in, timeout=30, what="logins once the database is back")
