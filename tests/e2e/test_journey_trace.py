"""One customer's journey is one trace, from the capture at the gateway to onboarding.

The gateway, leads, sales and the service desk run in this process (uvicorn servers
on ports of their own, real HTTP between the gateway and the services, the real
broker and mongod between the departments), all tracing into one in-memory exporter.
The journey is driven through the gateway by separate user requests, as people would:
marketing captures the lead and records its behaviour, the rep accepts it, customer
success reviews the commitments, the rep wins the deal. The test then walks the
parents from the service desk's ``account.onboarding_started`` back to the root and
checks every hop: the capture request at the gateway, the gateway -> leads HTTP hop,
each event's PRODUCER span stored with its outbox row, and each department's CONSUMER
span as the child of the record's ``traceparent``. The later user requests are linked
from the journey's spans.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from crm_platform import tracing
from crm_platform.devinfra.journey import (
    Gateway,
    accept_and_win,
    capture_and_qualify,
    inbox_owner,
    onboarded_account,
    seed_rosters,
    seed_users,
)
from crm_platform.devinfra.launcher import SERVICES, Platform
from crm_platform.testing import idle_backoff_ms, start_group_at_end
from fastapi import FastAPI
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

pytestmark = pytest.mark.e2e

RUN = uuid.uuid4().hex[:6]
NAMES = ("leads", "sales", "service-desk", "gateway")


def _port_base() -> int:
    configured = os.environ.get("CRM_TRACE_SERVICE_PORT_BASE")
    if configured:
        return int(configured)
    return int(os.environ.get("CRM_E2E_SERVICE_PORT_BASE", "18000")) + 20


def _apps(platform: Platform) -> dict[str, FastAPI]:
    from gateway.main import create_app as gateway_app
    from gateway.settings import GatewaySettings
    from leads.main import create_app as leads_app
    from leads.settings import LeadsSettings
    from sales.main import create_app as sales_app
    from sales.settings import SalesSettings
    from service_desk.main import create_app as service_desk_app
    from service_desk.settings import ServiceDeskSettings

    def env(name: str) -> dict[str, str]:
        values = platform.env_for(platform.spec(name))
        return {k: v for k, v in values.items() if k.startswith(("CRM_", "KAFKA_", "MONGODB_"))}

    return {
        "leads": leads_app(LeadsSettings.model_validate(env("leads"))),
        "sales": sales_app(SalesSettings.model_validate(env("sales"))),
        "service-desk": service_desk_app(ServiceDeskSettings.model_validate(env("service-desk"))),
        "gateway": gateway_app(GatewaySettings.model_validate(env("gateway"))),
    }


async def _groups_at_end(platform: Platform) -> None:
    """New groups would first read what other suites left on the shared broker."""
    from leads.consumers import TOPICS as LEADS_TOPICS
    from sales.consumers import TOPICS as SALES_TOPICS
    from service_desk.consumers import TOPICS as SERVICE_DESK_TOPICS

    for name, topics in (("leads", LEADS_TOPICS), ("sales", SALES_TOPICS)):
        await start_group_at_end(platform.kafka_bootstrap, f"{name}{platform.group_suffix}", list(topics))
    await start_group_at_end(
        platform.kafka_bootstrap, f"service-desk{platform.group_suffix}", list(SERVICE_DESK_TOPICS)
    )


@contextlib.asynccontextmanager
async def serving(apps: dict[str, FastAPI], platform: Platform) -> AsyncIterator[None]:
    servers: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []
    try:
        for name in NAMES:
            config = uvicorn.Config(
                apps[name], host="127.0.0.1", port=platform.port(name), log_config=None, lifespan="on"
            )
            server = uvicorn.Server(config)
            servers.append((server, asyncio.create_task(server.serve())))
            while not server.started:
                if servers[-1][1].done():
                    servers[-1][1].result()  # raises what stopped it
                await asyncio.sleep(0.05)
        yield
    finally:
        for server, _ in reversed(servers):
            server.should_exit = True
        for _, task in reversed(servers):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, timeout=30)


@pytest.fixture
def spans() -> Any:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    try:
        yield exporter
    finally:
        tracing.use_provider(None)


def _drive(gw: Gateway) -> tuple[str, str]:
    seed_users(gw)
    seed_rosters(gw)
    lead_id = capture_and_qualify(gw, f"trace-{RUN}", "trace-campaign", "Grace Hopper")
    owner = gw.username_of(inbox_owner(gw, lead_id, timeout=60))
    opp = accept_and_win(gw, owner, lead_id, 60, lambda _: None)
    onboarded_account(gw, opp, timeout=60)
    return lead_id, opp


def _one(
    spans: Sequence[ReadableSpan],
    what: str,
    match: Callable[[ReadableSpan], bool],
    on: Sequence[ReadableSpan] = (),
) -> ReadableSpan:
    """The span for ``what``; with ``on`` (the path), the one on it if any. A record that was
    tried again (a sealed handoff whose key had not arrived yet waits and is retried) has one
    consumer span per try, and only the try that stored it has children."""
    found = [s for s in spans if match(s)]
    assert found, f"no span for {what}"
    return next((s for s in found if s in on), found[0])


def _attr(span: ReadableSpan, key: str) -> Any:
    return (span.attributes or {}).get(key)


def _producer(event_type: str, lead_id: str) -> Callable[[ReadableSpan], bool]:
    return lambda s: (
        s.kind == SpanKind.PRODUCER
        and _attr(s, "crm.event_type") == event_type
        and _attr(s, "crm.correlation_id") == lead_id
    )


def _consumer(event_type: str, lead_id: str, group: str) -> Callable[[ReadableSpan], bool]:
    return lambda s: (
        s.kind == SpanKind.CONSUMER
        and _attr(s, "crm.event_type") == event_type
        and _attr(s, "crm.correlation_id") == lead_id
        and str(_attr(s, "messaging.consumer.group.name")).startswith(group)
    )


def _ancestry(span: ReadableSpan, by_id: dict[int, ReadableSpan]) -> list[ReadableSpan]:
    chain = [span]
    while chain[-1].parent is not None:
        parent = by_id.get(chain[-1].parent.span_id)
        assert parent is not None, f"the parent of {chain[-1].name} was never recorded"
        chain.append(parent)
    return chain


async def test_a_journey_from_capture_to_onboarding_is_one_trace(
    crm_infra: Any, spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    base = _port_base()
    platform = Platform(
        crm_infra.kafka_bootstrap,
        crm_infra.mongodb_uri,
        tmp_path,
        gateway_port=base + 9,
        service_port_base=base,
        db_prefix=f"trace_{RUN}_",
        group_suffix=f"-trace-{RUN}",
        consumer_idle_backoff_ms=idle_backoff_ms(crm_infra),
        specs=tuple(s for s in SERVICES if s.name in NAMES),
    )
    await _groups_at_end(platform)
    async with serving(_apps(platform), platform):
        gw = Gateway(platform.url("gateway"))
        try:
            lead_id, _opp = await asyncio.to_thread(_drive, gw)
        finally:
            gw.close()
    finished = spans.get_finished_spans()
    by_id = {s.context.span_id: s for s in finished}

    onboarding = _one(finished, "onboarding", _producer("account.onboarding_started", lead_id))
    chain = _ancestry(onboarding, by_id)
    names = [s.name for s in chain]

    # From onboarding back to the capture: each department's consumer is the child of the
    # producer whose traceparent its record carried.
    won_consumed = _one(
        finished, "deal.won at the desk", _consumer("deal.won", lead_id, "service-desk"), chain
    )
    won_produced = _one(finished, "deal.won emitted", _producer("deal.won", lead_id))
    qualified_consumed = _one(
        finished, "lead.qualified in sales", _consumer("lead.qualified", lead_id, "sales"), chain
    )
    qualified_produced = _one(finished, "lead.qualified emitted", _producer("lead.qualified", lead_id))
    captured = _one(finished, "lead.captured emitted", _producer("lead.captured", lead_id))
    for span in (won_consumed, won_produced, qualified_consumed, qualified_produced, captured):
        assert span in chain, f"{span.name} ({_attr(span, 'crm.event_type')}) not on the path: {names}"
    assert chain.index(won_consumed) < chain.index(won_produced) < chain.index(qualified_consumed)
    assert chain.index(qualified_consumed) < chain.index(qualified_produced) < chain.index(captured)

    # The root: the capture request at the gateway, then its hop to leads (real HTTP).
    root, leads_request = chain[-1], chain[-2]
    assert (root.kind, _attr(root, "http.route")) == (SpanKind.SERVER, "/api/{service}/{path:path}"), names
    assert (leads_request.kind, _attr(leads_request, "http.route")) == (SpanKind.SERVER, "/leads"), names
    assert chain[-3] is captured
    assert {s.context.trace_id for s in chain} == {root.context.trace_id}

    # The later user requests (the qualifying behaviour, the win) are requests of their own,
    # linked from the events they caused in the journey.
    for produced in (qualified_produced, won_produced):
        linked = [by_id.get(link.context.span_id) for link in produced.links]
        assert any(s is not None and s.kind == SpanKind.SERVER for s in linked), produced.name
        assert all(s is None or s.context.trace_id != root.context.trace_id for s in linked)
    verdict = _one(finished, "lead.verdict at leads", _consumer("lead.verdict", lead_id, "leads"))
    assert verdict.context.trace_id == root.context.trace_id
