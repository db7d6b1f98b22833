"""The gateway's runtime: its MongoDB database and the upstream HTTP client; no Kafka.

A :class:`ServiceRuntime` without subscription would still run the outbox relay
and make readiness depend on the broker. The gateway publishes no events, so it
only sets up its indexes and closes its clients.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from crm_platform.runtime import ServiceRuntime

from gateway.upstream import Upstreams

log = logging.getLogger("crm.runtime")


@dataclass
class GatewayRuntime(ServiceRuntime):
    upstreams: Upstreams | None = field(default=None)

    async def start(self) -> None:
        if self.indexes is not None:
            await self.indexes(self.store.db)
        for job in self.background:
            self._tasks.append(asyncio.create_task(job(), name="gateway-job"))
        log.info("gateway runtime started", extra={"database": self.settings.database_name})

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # Bounded: a job that ignores its cancellation must not hold up the shutdown.
            _, stuck = await asyncio.wait(self._tasks, timeout=5)
            for task in stuck:
                log.warning("gateway job %s did not stop in 5 s", task.get_name())
        self._tasks.clear()
        if self.upstreams is not None:
            await self.upstreams.aclose()
        await self.client.close()
        log.info("gateway runtime stopped")

    async def check_ready(self) -> dict[str, str]:
        try:
            await asyncio.wait_for(self.client.admin.command("ping"), timeout=2)
            return {"mongodb": "ok"}
        except Exception as exc:
            return {"mongodb": f"unreachable: {type(exc).__name__}"}
