"""The analytics worker's CPU per live handoff: a steady trickle into a running worker, A/B trees.

``.venv/bin/python bench/analytics_live.py`` starts a fresh broker and mongod (the bench's
ports) and, ``BENCH_LIVE_RUNS`` times (4), a fresh analytics worker positioned at the topics'
end; it then produces ``BENCH_LIVE_RATE`` handoffs a second (10) for ``BENCH_LIVE_SECONDS`` (20),
each as the platform makes it: three behaviours, the qualification, the status change, sales'
assignment and its receipt (7 events), and prints the CPU milliseconds per handoff of the
worker, the broker and mongod from the first event to the last fold, and each process's idle CPU
per second afterwards. ``BENCH_REPLAY_TREES=/path/a,/path/b`` alternates the worker's code
between checkouts as in ``bench/replay.py``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
from aiokafka import AIOKafkaProducer
from crm_contracts import Envelope, envelope_for, utcnow
from crm_contracts.events.common import Behaviour, Consent, Contact
from crm_contracts.events.leads import BehaviourRecordedV1, LeadQualifiedV1, LeadStatusChangedV1
from crm_contracts.events.platform import HandoffReceivedV1
from crm_contracts.events.sales import LeadAssignedV1
from crm_contracts.registry import model_for
from crm_platform.devinfra.launcher import Platform
from crm_platform.kafka import make_producer
from crm_platform.testing import idle_backoff_ms, start_group_at_end
from replay import tree_env
from run_bench import HOME, fresh_infra, parse_args
from scenarios import _folded, _free_port, say
from system import cpu_ms_per_op, cpu_snapshot, infra_pids, load_average

EVENTS_PER_HANDOFF = 7


def handoff(lead: str) -> list[Envelope]:
    """One lead's handoff as the platform's events: behaviours, qualification, status, assignment, receipt."""
    now, contact = utcnow(), Contact(name="Live Lead", email="live@example.com")
    qualified = envelope_for(
        LeadQualifiedV1(
            lead_id=lead,
            contact=contact,
            company="Live Co",
            score=50.0,
            threshold=40.0,
            score_reasons=[],
            source_channel="web",
            behaviour_summary={},
            consent=Consent(marketing_email=True),
            qualified_at=now,
        ),
        source="leads",
        correlation_id=lead,
    )
    behaviour = BehaviourRecordedV1(
        lead_id=lead, behaviour=Behaviour.PAGE_VIEW, score=3, source_channel="web"
    )
    receipt = HandoffReceivedV1(
        handoff="lead-qualified",
        handoff_event_id=str(qualified.event_id),
        handoff_event_type="lead.qualified",
        from_department="marketing",
        to_department="sales",
        occurred_at=now,
        stored_at=now,
        transport_latency_seconds=0.004,
    )
    return [
        *(envelope_for(behaviour, source="leads", correlation_id=lead) for _ in range(3)),
        qualified,
        envelope_for(
            LeadStatusChangedV1(lead_id=lead, status="qualified", source_channel="web"),
            source="leads",
            correlation_id=lead,
        ),
        envelope_for(
            LeadAssignedV1(lead_id=lead, owner="rep-1", response_due_at=now),
            source="sales",
            correlation_id=lead,
        ),
        envelope_for(receipt, source="sales", correlation_id=lead),
    ]


async def folded(client: httpx.AsyncClient, url: str) -> int:
    try:
        return _folded((await client.get(url)).text)
    except httpx.HTTPError:
        return -1


async def send(producer: AIOKafkaProducer, envelopes: list[Envelope]) -> None:
    for env in envelopes:
        topic = model_for(env.event_type, env.schema_version).topic
        await producer.send(topic, env.to_bytes(), key=env.partition_key.encode(), headers=env.headers())


async def one_run(infra: Any, tree: str, rate: float, seconds: float) -> dict[str, Any]:
    """A fresh worker at the topics' end, warmed up by one handoff, then the trickle. Why long:
    one measurement, start to end, whose steps share its clocks and counters."""
    from analytics.worker import SOURCE_TOPICS

    bootstrap, mongodb_uri = infra.kafka_bootstrap, infra.mongodb_uri
    group = f"crm-analytics-live-{uuid.uuid4().hex[:6]}"
    await start_group_at_end(bootstrap, group, list(SOURCE_TOPICS))
    port = _free_port()
    worker = Platform(
        bootstrap,
        mongodb_uri,
        HOME / "logs",
        db_prefix="bench_live_",
        group_suffix=group.removeprefix("crm-analytics"),
        only=("analytics-worker",),
        consumer_idle_backoff_ms=idle_backoff_ms(infra),
        extra_env={"CRM_ANALYTICS_WORKER_WEB_PORT": str(port), **tree_env(tree), **set_env()},
    )
    worker.start()
    url, run = f"http://127.0.0.1:{port}/metrics", uuid.uuid4().hex[:6]
    producer = make_producer(bootstrap, "crm-bench-live")
    await producer.start()
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            await send(producer, handoff(f"lv-{run}-warm"))
            deadline = time.monotonic() + 90
            while await folded(client, url) < EVENTS_PER_HANDOFF and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
            await asyncio.sleep(3)
            base = await folded(client, url)
            pids = {"analytics-worker": worker.procs["analytics-worker"].pid, **infra_pids(HOME)}
            before, n, start = cpu_snapshot(pids), int(rate * seconds), time.perf_counter()
            for i in range(n):
                await send(producer, handoff(f"lv-{run}-{i}"))
                await asyncio.sleep(max(0.0, start + (i + 1) / rate - time.perf_counter()))
            await producer.flush()
            deadline = time.monotonic() + 60
            while await folded(client, url) < base + EVENTS_PER_HANDOFF * n and time.monotonic() < deadline:
                await asyncio.sleep(0.25)
            after = cpu_snapshot(pids)
            await asyncio.sleep(10)
            idle = cpu_ms_per_op(after, cpu_snapshot(pids), 10)
    finally:
        await producer.stop()
        worker.stop()
    per_handoff = cpu_ms_per_op(before, after, n, digits=3)
    say(
        f"{tree or 'this checkout'}: {n} handoffs at {rate}/s; CPU ms per handoff {per_handoff}; "
        f"idle CPU ms per second {idle}"
    )
    return {
        "tree": tree,
        "cpu_ms_per_handoff": per_handoff,
        "idle_cpu_ms_per_second": idle,
        "load": load_average(),
    }


def set_env() -> dict[str, str]:
    """``BENCH_SET_CRM_X=v`` runs the worker with ``CRM_X=v`` (as ``run_bench`` does the services)."""
    return {k[len("BENCH_SET_") :]: v for k, v in os.environ.items() if k.startswith("BENCH_SET_CRM_")}


async def main() -> int:
    args = parse_args()
    trees = os.environ.get("BENCH_REPLAY_TREES", "").split(",")
    rate = float(os.environ.get("BENCH_LIVE_RATE", "10"))
    seconds = float(os.environ.get("BENCH_LIVE_SECONDS", "20"))
    infra = fresh_infra(args)
    try:
        for k in range(int(os.environ.get("BENCH_LIVE_RUNS", "4"))):
            await one_run(infra, trees[k % len(trees)], rate, seconds)
    finally:
        infra.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
