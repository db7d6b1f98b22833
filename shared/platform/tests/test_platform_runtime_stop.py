"""A runtime's stop never hangs on a background job that swallows its cancellation.

A stop cancels the periodic jobs (e.g. action-item escalations every few seconds, nearly always
inside a database call) and waits for them. A job whose cancellation is caught somewhere below it
carries on with its loop; a single cancel then waited for forever held a test's teardown for
minutes under load. Without a broker or database: the helper ``stop`` uses, on plain tasks.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from crm_platform.runtime import _cancel_all


async def _swallows_the_first_cancel(rounds: list[int]) -> None:
    while True:
        rounds.append(1)
        try:
            await asyncio.sleep(3600)  # e.g. a database call that catches the cancel and returns
        except asyncio.CancelledError:
            if len(rounds) > 1:
                raise


async def _ignores_every_cancel(released: asyncio.Event) -> None:
    while not released.is_set():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            continue


async def test_a_job_that_swallowed_one_cancel_is_cancelled_again_and_ends() -> None:
    rounds: list[int] = []
    job = asyncio.create_task(_swallows_the_first_cancel(rounds))
    await asyncio.sleep(0)
    started = time.monotonic()
    await asyncio.wait_for(_cancel_all([job]), timeout=10)
    assert job.cancelled()
    assert len(rounds) == 2
    assert time.monotonic() - started < 5, "ended by a second cancel, not by the caller giving up"


async def test_a_job_that_ignores_every_cancel_is_left_behind_with_where_it_is(
    caplog: pytest.LogCaptureFixture,
) -> None:
    released = asyncio.Event()
    job = asyncio.create_task(_ignores_every_cancel(released), name="stubborn-job")
    await asyncio.sleep(0)
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="crm.runtime"):
        await asyncio.wait_for(_cancel_all([job], rounds=3), timeout=10)
    assert time.monotonic() - started < 5
    assert not job.done()
    logged = [r.getMessage() for r in caplog.records if r.name == "crm.runtime"]
    assert any("stubborn-job ignores cancellation" in m and "_ignores_every_cancel" in m for m in logged)
    released.set()  # the test's own event loop must not keep it
    job.cancel()
    await job
