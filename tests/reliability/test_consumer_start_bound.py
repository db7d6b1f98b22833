"""A consumer whose group join is never answered reconnects instead of waiting forever
(a department's own consumer, and its handoff-receipt listener).

``AIOKafkaConsumer.start()`` returns once the group has assigned it partitions, and aiokafka
retries an unanswered join for as long as it takes: a coordinator that never answers (a broker
that just restarted may not) used to leave the consumer unsubscribed, silently, until the
liveness watchdog's stall window. Each client start is now bounded (``CRM_KAFKA_START_SECONDS``,
``crm_platform.kafka.start_client``): past it the consumer logs a warning naming its group, the
client and the bound, drops the half-started clients at once and reconnects after its backoff.

The broker is the real test broker behind a TCP proxy (every address the broker hands out
rewritten to the proxy's, so every connection goes through it) that, while it holds joins,
neither forwards nor answers a JoinGroup request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable

import pytest
from crm_platform.runtime import ServiceRuntime, Subscription
from crm_platform.settings import ServiceSettings
from crm_platform.testing import eventually, produce_together
from reliability.probe import envelope, record_effect

pytestmark = pytest.mark.integration

JOIN_GROUP = 11  # the Kafka protocol's api key of a JoinGroup request
START_SECONDS = 1.0


class JoinHoldingProxy:
    """A TCP proxy in front of a broker; while ``holding``, JoinGroup requests are dropped
    (never forwarded, never answered) and counted in ``held``."""

    def __init__(self, bootstrap: str) -> None:
        host, port = bootstrap.split(",")[0].rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.holding = True
        self.held = 0
        self._server: asyncio.Server | None = None
        self._broker_address = b""
        self._proxy_address = b""
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        port = self._server.sockets[0].getsockname()[1]
        # A broker's address in Metadata and FindCoordinator answers: its host, then its port.
        self._broker_address = self.host.encode() + self.port.to_bytes(4, "big")
        self._proxy_address = self.host.encode() + port.to_bytes(4, "big")
        return f"{self.host}:{port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _serve(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        broker_in, broker_out = await asyncio.open_connection(self.host, self.port)
        pipes = [
            asyncio.create_task(self._requests(client_in, broker_out)),
            asyncio.create_task(self._responses(broker_in, client_out)),
        ]
        self._pipes.update(pipes)
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pipe in pipes:
                pipe.cancel()
                self._pipes.discard(pipe)
            for writer in (broker_out, client_out):
                writer.close()

    async def _requests(self, source: asyncio.StreamReader, broker: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                size = await source.readexactly(4)
                frame = await source.readexactly(int.from_bytes(size, "big"))
                if self.holding and int.from_bytes(frame[:2], "big") == JOIN_GROUP:
                    self.held += 1
                    continue
                broker.write(size + frame)
                await broker.drain()

    async def _responses(self, broker: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                size = await broker.readexactly(4)
                frame = await broker.readexactly(int.from_bytes(size, "big"))
                client.write(size + frame.replace(self._broker_address, self._proxy_address))
                await client.drain()


async def test_a_consumer_whose_join_is_never_answered_reconnects_and_consumes(
    kafka_bootstrap: str,
    make_settings: Callable[..., ServiceSettings],
    scratch_topics: Callable[[str], tuple[str, str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    for logger in ("crm.consumer", "crm.receipts"):
        caplog.set_level(logging.INFO, logger=logger)
    service = f"rel-start-{uuid.uuid4().hex[:6]}"
    topic, _ = scratch_topics(service)
    proxy = JoinHoldingProxy(kafka_bootstrap)
    settings = make_settings(
        service,
        KAFKA_BOOTSTRAP_SERVERS=await proxy.start(),
        CRM_KAFKA_START_SECONDS=START_SECONDS,
        CRM_CONSUMER_STALL_SECONDS=3600,  # the watchdog's rejoin is not what is tested
    )
    runtime = ServiceRuntime(
        settings,
        # A department: its handoff-receipt listener (a consumer group of its own) runs too.
        subscription=Subscription(
            topics=[topic], handlers={"lead.captured": record_effect}, department="sales"
        ),
    )
    fatal: list[str] = []
    runtime.on_fatal = fatal.append
    group = settings.group_id

    def logs(text: str, logger: str = "crm.consumer") -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == logger and text in r.getMessage()]

    await runtime.start()
    try:
        # Joins unanswered: each start ends at its bound with a warning, and the consumer
        # tries again with fresh clients (another join reaches the proxy).
        async def retried_twice() -> bool:
            retried = len(logs("did not start within")) >= 2 and proxy.held >= 3
            return retried and bool(logs(f"{group}.handoff-receipts did not start within", "crm.receipts"))

        await eventually(retried_twice, timeout=60, what="two bounded starts, each logged")
        warning = logs("did not start within")[0]
        assert group in warning
        assert f"{service}-consumer" in warning
        assert f"within {START_SECONDS:g} s" in warning
        assert not logs("subscribed")
        # Dropped at once: the half-started consumer's stop does not wait for the join's answer.
        assert not [r for r in caplog.records if "client stop failed" in r.getMessage()]

        # The coordinator answers again: the next attempt joins, subscribes and consumes.
        proxy.holding = False
        events = [envelope(f"lead-{i}", f"n{i}") for i in range(20)]
        await produce_together(kafka_bootstrap, topic, events)

        async def all_consumed() -> bool:
            done = {d["_id"] async for d in runtime.db["effects"].find({}, {"_id": 1})}
            return {str(e.event_id) for e in events} <= done

        await eventually(all_consumed, timeout=60, what="every event consumed after the joins were answered")
        assert logs("subscribed")
        assert not fatal
    finally:
        await runtime.stop()
        await proxy.stop()
