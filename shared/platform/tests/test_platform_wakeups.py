"""An idle process's timers end on one grid (crm_platform.wakeups): PyMongo's half-second polls
with the consumers' idle waits, each within half a grid step of what it asked."""

from __future__ import annotations

import asyncio

import pymongo.network_layer
import pymongo.periodic_executor
import pytest
from crm_platform import wakeups
from crm_platform.mongo import connect
from crm_platform.testing import timers_asked


def test_a_client_made_by_the_platform_has_pymongos_polls_on_the_grid() -> None:
    connect("mongodb://127.0.0.1:1", "test")  # never connects here
    for module in (pymongo.periodic_executor, pymongo.network_layer):
        assert module.asyncio.sleep is wakeups.sleep_on_grid
        # the rest of asyncio as it is
        assert module.asyncio.get_running_loop is asyncio.get_running_loop
        assert module.asyncio.Future is asyncio.Future
    wakeups.align_pymongo_polls()  # idempotent
    assert pymongo.periodic_executor.asyncio.sleep is wakeups.sleep_on_grid


async def test_a_sleep_on_the_grid_ends_on_it_and_a_short_one_is_not_moved(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    asked = timers_asked(monkeypatch)
    begun = loop.time()
    assert await wakeups.sleep_on_grid(0.5, "done") == "done"
    [when] = asked
    step = wakeups.WAKE_GRID_SECONDS
    assert when == round(when / step) * step
    assert abs(when - (begun + 0.5)) <= step / 2 + 0.01
    asked.clear()
    begun = loop.time()
    await wakeups.sleep_on_grid(0.01)
    assert not asked or asked[0] - begun < step, "a short sleep is not moved to the grid"


async def test_a_sleep_on_the_grid_is_cancellable() -> None:
    sleeping: asyncio.Task[None] = asyncio.create_task(wakeups.sleep_on_grid(3600))
    await asyncio.sleep(0)
    sleeping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sleeping


def test_pymongos_polling_modules_are_left_alone_if_they_no_longer_use_asyncio(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pymongo.periodic_executor, "asyncio", object())
    with pytest.raises(RuntimeError, match="PyMongo changed"):
        wakeups.align_pymongo_polls()
