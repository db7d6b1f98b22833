"""The bench's scenarios beyond the handoff: bulk capture, a backlog drain, analytics' replay.

* **Bulk capture**: ``POST /api/leads/leads/bulk`` through the gateway, many leads
  per request; leads/s from the first request to the last answer.
* **Backlog drain**: sales is stopped, ``n`` lead-qualified handoffs are produced
  to its topic (as leads would while sales is down), sales is started again and
  the time until its consumer group has committed past all of them is measured.
  Then sales' own database is read: every handoff must have exactly one inbox item
  (nothing lost, nothing doubled).
* **Analytics replay**: a faust worker with a fresh application id (so a fresh
  consumer group and fresh tables) reads every source topic from the beginning;
  events/s from its first commit until it has committed the topics' ends.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from crm_contracts import envelope_for, utcnow
from crm_contracts.events.common import Behaviour, Consent, Contact, ScoreReason
from crm_contracts.events.leads import LeadQualifiedV1
from crm_contracts.topics import LEAD_QUALIFIED
from crm_platform.devinfra.launcher import Platform
from crm_platform.kafka import make_consumer, make_producer
from crm_platform.kafka_security import aiokafka_security
from profiling import profiled
from pymongo import AsyncMongoClient
from system import cpu_ms_per_op, cpu_snapshot

# py-spy profiles of the drain (BENCH_PROFILE), beside run_bench's
PROFILE_DIR = Path(__file__).resolve().parent / "results/profile"


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


async def bulk_capture(
    gateway: str, headers: dict[str, str], *, total: int, per_request: int, clients: int
) -> dict[str, Any]:
    """Capture ``total`` new leads in requests of ``per_request`` with ``clients`` at once."""
    run = uuid.uuid4().hex[:6]
    batches = iter(range(0, total, per_request))
    accepted = 0
    failures: list[str] = []
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=gateway, headers=headers, timeout=120) as client:

        async def worker() -> None:
            nonlocal accepted
            for start in batches:
                leads = [
                    {
                        "name": f"Bulk {i}",
                        "email": f"bulk-{run}-{i}@example.com",
                        "company": "Bulk Co",
                        "source_channel": "web_form",
                        "consent": {"marketing_email": True},
                    }
                    for i in range(start, min(start + per_request, total))
                ]
                began = time.perf_counter()
                r = await client.post("/api/leads/leads/bulk", json={"leads": leads})
                latencies.append(time.perf_counter() - began)
                if r.status_code >= 300:
                    failures.append(str(r.status_code))
                    continue
                accepted += len(r.json()["results"])

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    if failures:
        say(f"  !! {len(failures)} bulk requests failed: {sorted(set(failures))}")
    ordered = sorted(latencies) or [float("nan")]
    return {
        "leads": accepted,
        "seconds": round(elapsed, 2),
        "rate": accepted / elapsed if elapsed else 0.0,
        "per_request": per_request,
        "clients": clients,
        "request_p99_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000,
        "failures": len(failures),
    }


def _handoff_template(run: str) -> bytes:
    """One lead.qualified envelope whose ids are placeholders, so n copies cost no validation."""
    event = LeadQualifiedV1(
        lead_id=f"bl-{run}-LEADNUM",
        contact=Contact(name="Backlog Lead", email="backlog@example.com"),
        company="Backlog Co",
        score=50.0,
        threshold=40.0,
        score_reasons=[ScoreReason(behaviour=Behaviour.TRIAL_SIGNUP, count=1, points=50.0)],
        source_channel="web_form",
        behaviour_summary={Behaviour.TRIAL_SIGNUP: 1},
        consent=Consent(marketing_email=True),
        qualified_at=utcnow(),
    )
    env = envelope_for(event, source="leads", correlation_id=f"bl-{run}-LEADNUM")
    doc = env.model_dump(mode="json")
    doc["event_id"] = "EVENTID"
    return json.dumps(doc).encode()


async def produce_handoffs(bootstrap: str, n: int) -> str:
    """Produce ``n`` distinct lead-qualified handoffs; returns the run's lead id prefix."""
    run = uuid.uuid4().hex[:8]
    template = _handoff_template(run)
    producer = make_producer(bootstrap, "crm-bench-backlog")
    await producer.start()
    try:
        pending = []
        for i in range(n):
            event_id = str(uuid.uuid4())
            lead = f"bl-{run}-{i}"
            value = template.replace(b"EVENTID", event_id.encode()).replace(
                f"bl-{run}-LEADNUM".encode(), lead.encode()
            )
            headers = [
                ("event_type", b"lead.qualified"),
                ("schema_version", b"1"),
                ("event_id", event_id.encode()),
            ]
            pending.append(await producer.send(LEAD_QUALIFIED, value, key=lead.encode(), headers=headers))
            if len(pending) >= 2000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return f"bl-{run}-"


async def group_lag(bootstrap: str, group: str, topics: Iterable[str]) -> int:
    """Records on ``topics`` not yet committed by ``group`` (its whole lag)."""
    wanted = list(topics)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **aiokafka_security())
    consumer = make_consumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
        tps = [TopicPartition(t, p) for t in wanted for p in sorted(consumer.partitions_for_topic(t) or [])]
        if not tps:
            await consumer.topics()
            tps = [
                TopicPartition(t, p) for t in wanted for p in sorted(consumer.partitions_for_topic(t) or [])
            ]
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
        await admin.close()
    lag = 0
    for tp, end in ends.items():
        meta = committed.get(tp)
        done = meta.offset if meta is not None and meta.offset >= 0 else 0
        lag += max(0, end - done)
    return lag


async def backlog_drain(
    platform: Platform,
    mongodb_uri: str,
    *,
    n: int,
    max_seconds: float,
    infra: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Sales down, ``n`` handoffs wait in Kafka, sales back: how fast it drains them, and exactly once?

    Also the CPU each process spent per drained event (sales from when it is ready; the
    broker's and mongod's pids in ``infra``). Why long: one measurement, start to end, whose
    steps share its clocks and counters."""
    bootstrap = platform.kafka_bootstrap
    platform.stop(("sales",))
    say(f"backlog: sales stopped, producing {n} lead-qualified handoffs ...")
    prefix = await produce_handoffs(bootstrap, n)
    backlog = await group_lag(bootstrap, "sales", [LEAD_QUALIFIED])
    say(f"  {backlog} records wait for sales; starting it ...")
    ops_before = await mongod_operations(mongodb_uri)
    started = time.perf_counter()
    platform.start(("sales",))
    await asyncio.to_thread(platform.wait_ready, 90, ("sales",))
    ready = time.perf_counter()
    everyone = {**{name: p.pid for name, p in platform.procs.items() if p.poll() is None}, **(infra or {})}
    cpu_before = cpu_snapshot(everyone)
    lag = backlog
    with profiled("drain", {"sales": platform.procs["sales"].pid}, PROFILE_DIR):
        while lag > 0 and time.perf_counter() - ready < max_seconds:
            await asyncio.sleep(1.0)
            lag = await group_lag(bootstrap, "sales", [LEAD_QUALIFIED])
    finished = time.perf_counter()
    drained = backlog - lag
    cpu = cpu_ms_per_op(cpu_before, cpu_snapshot(everyone), drained)
    say(f"  CPU ms per drained event: {cpu}")
    ops = {k: v - ops_before.get(k, 0) for k, v in (await mongod_operations(mongodb_uri)).items()}
    per_event = {k: round(v / drained, 2) for k, v in ops.items() if v} if drained else {}
    say(f"  mongod operations per drained event (sales' start-up included): {per_event}")
    items, doubled = await _inbox_check(mongodb_uri, platform.db_prefix + "sales", prefix)
    rate = drained / (finished - ready) if finished > ready else 0.0
    say(
        f"  drained {drained}/{backlog} in {finished - ready:.1f} s after ready ({rate:.0f}/s; "
        f"{ready - started:.1f} s to start); inbox items {items} of {n}, doubled {doubled}"
    )
    return {
        "events": n,
        "backlog": backlog,
        "drained": drained,
        "seconds": round(finished - ready, 2),
        "startup_seconds": round(ready - started, 2),
        "rate": rate,
        "complete": lag == 0,
        "inbox_items": items,
        "lost": max(0, n - items) if lag == 0 else None,
        "doubled": doubled,
        "mongod_ops_per_event": per_event,
        "cpu_ms_per_event": cpu,
    }


async def mongod_operations(mongodb_uri: str) -> dict[str, int]:
    """mongod's operation counters (serverStatus ``opcounters``; a transaction's commit is a
    ``command``), to count round trips per event independently of the machine's load."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_uri)
    try:
        status = await client.admin.command("serverStatus")
        return {k: int(v) for k, v in status["opcounters"].items()}
    finally:
        await client.close()


async def _inbox_check(mongodb_uri: str, database: str, prefix: str) -> tuple[int, int]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_uri)
    try:
        inbox = client[database]["inbox"]
        match = {"lead_id": {"$regex": f"^{prefix}"}}
        items = await inbox.count_documents(match)
        cursor = await inbox.aggregate(
            [
                {"$match": match},
                {"$group": {"_id": "$lead_id", "n": {"$sum": 1}}},
                {"$match": {"n": {"$gt": 1}}},
                {"$count": "doubled"},
            ]
        )
        doubled = await cursor.to_list()
        return items, (doubled[0]["doubled"] if doubled else 0)
    finally:
        await client.close()


async def analytics_replay(
    platform: Platform,
    topics: tuple[str, ...],
    *,
    max_seconds: float,
    extra_env: dict[str, str] | None = None,
    others: Mapping[str, int] | None = None,
    profile_dir: Path | None = None,
    drop_changelogs: bool = False,
) -> dict[str, Any]:
    """A fresh faust worker replays ``topics`` from the beginning: events/s, and the CPU
    milliseconds per event of the worker and of ``others`` (the broker, mongod) over the
    measured span. ``extra_env`` goes to the worker's process (``bench/replay.py`` runs
    another tree's worker with it); ``profile_dir`` records it with py-spy (BENCH_PROFILE);
    ``drop_changelogs`` deletes the worker's changelog topics afterwards (the embedded broker's
    CPU grows with its state: the next replay then starts from the same state)."""
    bootstrap = platform.kafka_bootstrap
    group = f"crm-analytics-replay-{uuid.uuid4().hex[:6]}"
    total = await group_lag(bootstrap, group, topics)
    worker = _replay_worker(platform, group, extra_env)
    say(f"analytics replay: a fresh worker ({group}) reads {total} events ...")
    worker.start()
    pids = {"analytics-worker": worker.procs["analytics-worker"].pid, **(others or {})}
    try:
        with profiled("replay", {"analytics-worker": pids["analytics-worker"]}, profile_dir or Path(".")):
            watch = await _watch_commits(bootstrap, group, topics, total, max_seconds, pids)
    finally:
        worker.stop()
        if drop_changelogs:
            await _drop_topics(bootstrap, prefix=f"{group}-")
    began, first, lag, ended, cpu = watch
    if first is None:
        say("  the worker committed nothing")
        return {"events": total, "rate": 0.0, "complete": False}
    rate, t0, lower_bound = _replay_rate(total, lag, first, began, ended)
    how = "at least (all at its first commit; start-up included)" if lower_bound else "after its first commit"
    per_event = cpu_ms_per_op(
        cpu["start" if lower_bound else "first"], cpu["end"], total - lag if lower_bound else first[1] - lag
    )
    say(f"  {total - lag}/{total} events; {rate:.0f} events/s {how}; CPU ms per event {per_event}")
    return {
        "cpu_ms_per_event": per_event,
        "events": total,
        "replayed": total - lag,
        "rate": rate,
        "seconds": round(ended - t0, 2),
        "startup_seconds": round(t0 - began, 2),
        "complete": lag == 0,
        "lower_bound": lower_bound,
    }


def _replay_worker(platform: Platform, group: str, extra_env: dict[str, str] | None) -> Platform:
    """The analytics worker alone, as ``platform`` runs it, with the app id ``group``."""
    return Platform(
        platform.kafka_bootstrap,
        platform.mongodb_uri,
        platform.logdir,
        db_prefix=platform.db_prefix + "replay_",
        group_suffix=group.removeprefix("crm-analytics"),
        only=("analytics-worker",),
        consumer_idle_backoff_ms=platform.consumer_idle_backoff_ms,
        gateway_port=platform.gateway_port,
        service_port_base=platform.service_port_base,
        extra_env=dict(extra_env or {}),
    )


async def _watch_commits(
    bootstrap: str,
    group: str,
    topics: tuple[str, ...],
    total: int,
    max_seconds: float,
    pids: Mapping[str, int],
) -> tuple[float, tuple[float, int] | None, int, float, dict[str, dict[str, float]]]:
    """Poll the group's lag until it is 0 (or ``max_seconds``): when it started, its first
    commit (time, lag), the lag left, when it ended, and CPU snapshots at start, first, end."""
    cpu: dict[str, dict[str, float]] = {"start": cpu_snapshot(pids)}
    began = time.perf_counter()
    first: tuple[float, int] | None = None
    lag = total
    while lag > 0 and time.perf_counter() - began < max_seconds:
        await asyncio.sleep(0.5)
        lag = await group_lag(bootstrap, group, topics)
        if first is None and lag < total:
            first, cpu["first"] = (time.perf_counter(), lag), cpu_snapshot(pids)
    ended = time.perf_counter()
    cpu["end"] = cpu_snapshot(pids)
    return began, first, lag, ended, cpu


async def _drop_topics(bootstrap: str, *, prefix: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **aiokafka_security())
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()


def _replay_rate(
    total: int, lag: int, first: tuple[float, int], began: float, ended: float
) -> tuple[float, float, bool]:
    """Events/s after the worker's first commit, from when that span starts, and whether it
    is only a lower bound: when everything was committed at the first commit, there is no
    span after it, so the whole run (start-up included) is the span."""
    t0, lag0 = first
    counted = lag0 - lag
    lower_bound = lag0 == 0
    if lower_bound:
        counted, t0 = total, began
    return (counted / (ended - t0) if ended > t0 else 0.0), t0, lower_bound
