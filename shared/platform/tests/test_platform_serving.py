"""The services' uvicorn server: one wake-up a second when idle, a stop signal seen at once."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import pytest
import uvicorn
from crm_platform import app as app_module
from crm_platform.serving import CalmServer
from fastapi import FastAPI


def _counting(server: uvicorn.Server) -> list[int]:
    ticks: list[int] = []
    plain_on_tick = server.on_tick

    async def on_tick(counter: int) -> bool:
        ticks.append(counter)
        return await plain_on_tick(counter)

    server.on_tick = on_tick  # type: ignore[method-assign]
    return ticks


async def _until(condition: Any, deadline: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not condition():
        assert loop.time() < end, "not within the deadline"
        await asyncio.sleep(0.01)


async def test_an_idle_server_does_not_wake_ten_times_a_second_and_a_signal_ends_its_wait() -> None:
    """uvicorn's own main loop ticks every 0.1 s (five ticks while these 0.5 s pass); this one
    waits its tick (an hour here) and a SIGTERM's handler ends the wait at once."""
    server = CalmServer(uvicorn.Config(FastAPI(), log_config=None, lifespan="off"))
    server.tick_seconds = 3600
    ticks = _counting(server)
    main = asyncio.create_task(server.main_loop())
    await _until(lambda: len(ticks) == 1)
    await asyncio.sleep(0.5)
    assert ticks == [0], "woke up before its tick or a signal"
    server.handle_exit(signal.SIGTERM, None)
    await asyncio.wait_for(main, timeout=10)
    assert ticks == [0, 10]
    assert server.should_exit


async def test_each_tick_refreshes_the_date_header() -> None:
    """uvicorn refreshes ``Date`` when ``counter % 10 == 0``: every one-second tick does."""
    server = CalmServer(uvicorn.Config(FastAPI(), log_config=None, lifespan="off"))
    server.tick_seconds = 0.01
    ticks = _counting(server)
    main = asyncio.create_task(server.main_loop())
    await _until(lambda: len(ticks) >= 3)
    server.should_exit = True
    await asyncio.wait_for(main, timeout=10)
    assert all(counter % 10 == 0 for counter in ticks)
    assert server.server_state.default_headers[0][0] == b"date"


def test_serve_runs_the_calm_server(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[uvicorn.Server] = []

    def run(self: uvicorn.Server, sockets: Any = None) -> None:
        self.started = True
        ran.append(self)

    monkeypatch.setattr(uvicorn.Server, "run", run)
    settings: Any = type(
        "S", (), {"http_host": "127.0.0.1", "http_port": 0, "http_loop": "asyncio", "http_parser": "h11"}
    )
    app_module.serve(FastAPI(), settings)
    assert len(ran) == 1
    assert isinstance(ran[0], CalmServer)
