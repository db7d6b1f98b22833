"""One grid for an idle process's timers, so the waits that end at about one moment wake it once.

On this VM a wake-up on a quiet core costs several times the CPU of the work it does (a halted
vCPU woken for each timer: docs/performance.md, twenty-third session, idle), so an idle service's
CPU is set by how many times a second it wakes, not by what each wake-up does. Each consumer's
idle pause, each wait for records and each of PyMongo's half-second polls had a timer of its own,
begun whenever its last round ended: about 35 wake-ups a second in an idle department. Ended on
one grid (:data:`WAKE_GRID_SECONDS` of the event loop's clock), the waits of about one length that
are due within one step end together (docs/performance.md, twenty-fourth session, wakeups).
"""

from __future__ import annotations

import asyncio
import math
import types
from typing import Any, TypeVar

T = TypeVar("T")

# The grid's step (seconds). A wait shorter than it is not moved (the consumers' plain pause
# while records flow, short retries); a longer one ends within half a step of when it was asked.
WAKE_GRID_SECONDS = 0.1


def on_grid(now: float, seconds: float) -> float:
    """When a wait of ``seconds`` begun at ``now`` ends: at ``now + seconds`` for a wait shorter
    than :data:`WAKE_GRID_SECONDS`, else at the grid's point nearest to it (never sooner than
    half a step after ``now``), so the wait is ``seconds`` within half a step."""
    if seconds < WAKE_GRID_SECONDS:
        return now + seconds
    step = WAKE_GRID_SECONDS
    return max(round((now + seconds) / step), math.ceil((now + step / 2) / step)) * step


async def sleep_on_grid(delay: float, result: T = None) -> T:  # type: ignore[assignment]
    """``asyncio.sleep`` whose end is on the grid (:func:`on_grid`); cancellable as it is."""
    if delay <= 0:
        return await asyncio.sleep(delay, result)
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    timer = loop.call_at(on_grid(loop.time(), delay), _wake, waiter)
    try:
        await waiter
    finally:
        timer.cancel()
    return result


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


# PyMongo's modules whose only long sleeps are its periodic polls: each periodic executor (the
# server monitor, its round-trip timer, the pool's maintenance) sleeps in steps of half a second
# to notice a request for an early check, and a streaming monitor's pending read wakes every
# half second to notice a cancellation (``_poll_cancellation``): about four wake-ups a second
# per client, on timers of their own.
_PYMONGO_POLLING_MODULES = ("pymongo.periodic_executor", "pymongo.network_layer")


def align_pymongo_polls() -> None:
    """Make PyMongo's half-second polls end on the grid, with the process's other idle waits:
    the modules above see ``asyncio`` with its ``sleep`` ending on the grid (the rest of
    ``asyncio`` as it is, looked up as cheaply as before). What they poll for, and how often,
    is unchanged: each sleep ends within half a grid step of when it asked. Idempotent."""
    import importlib

    for name in _PYMONGO_POLLING_MODULES:
        module = importlib.import_module(name)
        current: Any = getattr(module, "asyncio", None)
        if getattr(current, "_crm_on_grid", False):
            continue
        if current is not asyncio:
            raise RuntimeError(f"{name}.asyncio is not the asyncio module: PyMongo changed, look again")
        module.asyncio = _asyncio_on_grid()  # type: ignore[attr-defined]


_ON_GRID: types.ModuleType | None = None


def _asyncio_on_grid() -> types.ModuleType:
    """A module with everything ``asyncio`` has, its ``sleep`` :func:`sleep_on_grid`."""
    global _ON_GRID
    if _ON_GRID is None:
        module = types.ModuleType("asyncio")
        module.__dict__.update(asyncio.__dict__)
        module.sleep = sleep_on_grid  # type: ignore[attr-defined]
        module._crm_on_grid = True  # type: ignore[attr-defined]
        _ON_GRID = module
    return _ON_GRID
