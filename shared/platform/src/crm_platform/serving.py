"""uvicorn's server without its ten wake-ups a second (imported by :func:`crm_platform.app.serve`).

``uvicorn.Server.main_loop`` sleeps 0.1 s at a time to see whether a signal asked it to stop and
refreshes its ``Date`` header every tenth round: ten event-loop wake-ups a second in every idle
HTTP service (5-6% of an idle department's busy samples; docs/performance.md, fourteenth
session, idle). :class:`CalmServer` waits a second between rounds (the ``Date`` header is still
refreshed each second: its resolution) and a stop signal ends the wait at once, so a SIGTERM
starts the graceful shutdown no later than before.
"""

from __future__ import annotations

import asyncio
from types import FrameType

import uvicorn

TICK_SECONDS = 1.0


class CalmServer(uvicorn.Server):
    """A ``uvicorn.Server`` whose main loop wakes once a second, or at once on a stop signal."""

    tick_seconds = TICK_SECONDS

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tick: asyncio.Future[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        loop, tick = self._loop, self._tick
        if loop is not None and tick is not None:
            # A signal handler runs between two bytecodes of the loop's thread: hand the wake-up
            # to the loop (as asyncio's own signal handling does), never touch the future here.
            loop.call_soon_threadsafe(_end, tick)

    async def main_loop(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            # uvicorn refreshes the Date header when ``counter % 10 == 0``: at every round here.
            counter = (counter + 10) % 864000
            tick = self._tick = loop.create_future()
            timer = loop.call_later(self.tick_seconds, _end, tick)
            try:
                if not self.should_exit:  # a signal between the last check and this round
                    await tick
            finally:
                timer.cancel()
                self._tick = None
            should_exit = await self.on_tick(counter)


def _end(tick: asyncio.Future[None]) -> None:
    if not tick.done():
        tick.set_result(None)
