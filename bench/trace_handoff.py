"""What the lead-qualified handoff's latency at a fixed rate is made of, stage by stage.

``make bench`` gives the p50/p99 of the handoff's transport latency (occurred in leads ->
stored by sales, from sales' receipts). This traces each handoff of such a run through the
timestamps the platform already keeps, so the p99 can be split without instrumenting anything:

- ``occurred_at`` (the envelope): when leads' transaction emitted it, before its commit;
- ``produced_at`` (the record on the broker): when leads' outbox relay handed it to the producer;
- sales' processed-events ledger ``processed_at``: when the transaction that stored it began
  (the attempt that committed), for the handoff and for its person key (crm_platform.shredding:
  the key record reaches sales on its own topic, through a consumer of its own);
- ``stored_at`` (sales' receipt): when the handler had stored the effect, before the commit.

Stages: leads (commit, relay wake, outbox read, send), the hop to sales' transaction (broker,
fetch pause, classification, waiting for the key), the key's own hop, and the handler.
Also sales' count of person-key waits. Run (a fresh broker and mongod on the bench ports)::

    TRACE_RATE=25 TRACE_N=250 .venv/bin/python bench/trace_handoff.py

``TRACE_WARMUP_RATE`` sends the 50 warm-up handoffs at another rate than the traced ones (by
default the same): ``TRACE_RATE=0.8 TRACE_WARMUP_RATE=25 TRACE_N=40`` traces handoffs that each
find sales' consumers idle (a second without records: their 100 ms idle pause on the embedded
broker), against ``TRACE_RATE=2`` (docs/performance.md, "Twenty-eighth session, lead").
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from pymongo import AsyncMongoClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_bench as rb  # the bench's own helpers, found through the path above
from crm_contracts import Envelope
from crm_contracts.topics import HANDOFF_RECEIPTS, LEAD_QUALIFIED
from crm_platform.shredding import key_topics
from crm_platform.testing import TopicReader, auth_headers

Doc = dict[str, Any]
WARM_UP = 50


def _at(value: str | datetime) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value.replace("Z", "+00:00"))


async def produced_at(bootstrap: str) -> dict[str, datetime]:
    """Every handoff's and key's ``produced_at`` as it went over the broker, by event id."""
    reader = await TopicReader(bootstrap, LEAD_QUALIFIED, *key_topics("sales"), from_beginning=True).start()
    try:
        for _ in range(30):
            await reader.poll()
    finally:
        await reader.stop()
    records = (json.loads(r.value) for r in reader.records)
    return {d["event_id"]: _at(d["produced_at"]) for d in records if d.get("produced_at")}


async def stored(mongodb_uri: str, prefix: str) -> tuple[dict[str, str], dict[str, datetime]]:
    """The key event id written just before each handoff in leads' outbox (the transaction
    that qualifies a lead stores its person key ahead of it), and sales' ledger times."""
    client: AsyncMongoClient[Doc] = AsyncMongoClient(mongodb_uri, tz_aware=True)
    key_of: dict[str, str] = {}
    last_key: str | None = None
    try:
        async for row in client[f"{prefix}leads"]["outbox"].find({}).sort("_id", 1):
            for item in row.get("events", [row]):
                if "person-keys" in item["topic"]:
                    last_key = item["event_id"]
                elif item["event_type"] == "lead.qualified" and last_key is not None:
                    key_of[item["event_id"]] = last_key
        ledger = client[f"{prefix}sales"]["processed_events"].find({}, {"processed_at": 1})
        began = {d["_id"]: d["processed_at"] async for d in ledger}
    finally:
        await client.close()
    return key_of, began


Times = dict[str, datetime | None]


def handoff_times(
    receipts: list[Envelope],
    produced: dict[str, datetime],
    key_of: dict[str, str],
    began: dict[str, datetime],
) -> list[Times]:
    """Each handoff's timestamps (None where one is missing), in the order of the receipts."""
    out: list[Times] = []
    for receipt in receipts:
        handoff = receipt.payload["handoff_event_id"]
        key = key_of.get(handoff)
        out.append(
            {
                "occurred": _at(receipt.payload["occurred_at"]),
                "produced": produced.get(handoff),
                "began": began.get(handoff),
                "stored": _at(receipt.payload["stored_at"]),
                "key produced": produced.get(key) if key else None,
                "key began": began.get(key) if key else None,
            }
        )
    return out


def stage_seconds(times: Times) -> dict[str, float]:
    """One handoff's seconds per stage (a stage left out where a timestamp is missing)."""
    out: dict[str, float] = {}
    for name, (start, end) in STAGES.items():
        began_at, ended_at = times[start], times[end]
        if began_at is not None and ended_at is not None:
            out[name] = (ended_at - began_at).total_seconds()
    return out


def stages(every: list[Times]) -> dict[str, list[float]]:
    """Seconds per stage, every handoff's."""
    out: dict[str, list[float]] = {name: [] for name in STAGES}
    for times in every:
        for name, seconds in stage_seconds(times).items():
            out[name].append(seconds)
    return out


TOTAL = "total (the receipt's latency)"
SHORT = {  # the slowest handoffs' columns: each stage of the chain, in its order
    "leads: emitted -> produced": "leads",
    "produced -> sales' transaction began": "to sales",
    "key produced -> key's transaction began": "key hop",
    "key's transaction -> handoff's": "key->tx",
    "sales' transaction began -> stored": "handler",
    TOTAL: "total",
}


def slowest(every: list[Times], share: float = 0.01) -> str:
    """The slowest ``share`` of the handoffs (by the receipt's latency) stage by stage, in the
    window's order, with when each occurred (s into the window and the wall clock's time, to
    line them up with periodic work: sweeps, lease renewals, timers, checkpoints)."""
    timed = [(at, stage_seconds(t)) for t in every if (at := t["occurred"]) is not None]
    if not timed:
        return "no handoffs"
    start = min(at for at, _ in timed)
    count = max(1, math.ceil(share * len(timed)))
    worst = sorted(
        sorted(timed, key=lambda x: x[1].get(TOTAL, 0.0), reverse=True)[:count], key=lambda x: x[0]
    )
    head = f"{'s':>6s} {'occurred (UTC)':>15s} " + " ".join(f"{c:>8s}" for c in SHORT.values()) + " (ms)"
    lines = [f"the slowest {count} of {len(timed)}, stage by stage:", head]
    for at, secs in worst:
        cells = " ".join(f"{1000 * secs[n]:8.1f}" if n in secs else f"{'-':>8s}" for n in SHORT)
        lines.append(f"{(at - start).total_seconds():6.1f} {at.strftime('%H:%M:%S.%f')[:-3]:>15s} {cells}")
    return "\n".join(lines)


def _epoch(at: datetime | None) -> str:
    return f"{at.timestamp():.4f}" if at is not None else ""


def write_tsv(every: list[Times], path: Path) -> None:
    """Every handoff's timestamps (epoch seconds, empty where missing), to line up with other logs."""
    names = list(every[0]) if every else []
    rows = ["\t".join(names)] + ["\t".join(_epoch(t[n]) for n in names) for t in every]
    path.write_text("\n".join(rows) + "\n")


STAGES = {
    "leads: emitted -> produced": ("occurred", "produced"),
    "produced -> sales' transaction began": ("produced", "began"),
    "key produced -> key's transaction began": ("key produced", "key began"),
    "key's transaction -> handoff's": ("key began", "began"),
    "sales' transaction began -> stored": ("began", "stored"),
    "sales: produced -> stored": ("produced", "stored"),
    "total (the receipt's latency)": ("occurred", "stored"),
}


def table(by_stage: dict[str, list[float]]) -> str:
    lines = [f"{'stage':42s} {'n':>4s} {'p50':>8s} {'p90':>8s} {'p99':>8s} {'max':>8s} (ms)"]
    for name, values in by_stage.items():
        if values:
            q = [1000 * rb.pct(values, p) for p in (0.5, 0.9, 0.99)] + [1000 * max(values)]
            lines.append(f"{name:42s} {len(values):4d} " + " ".join(f"{v:8.1f}" for v in q))
    return "\n".join(lines)


async def run(platform: Any, bootstrap: str, n: int, rate: float, warmup_rate: float) -> list[Envelope]:
    """Qualify ``n`` leads at ``rate``/s after a warm-up at ``warmup_rate``/s; sales' receipts of them."""
    marketing = auth_headers(["marketing"], "bench")
    await rb._configure(platform, marketing)
    ids, _ = await rb.capture_through_gateway(platform.url("gateway"), n + WARM_UP, 8, marketing)
    reader = await TopicReader(bootstrap, HANDOFF_RECEIPTS).start()
    try:
        leads = platform.url("leads")
        await rb.qualify(leads, ids[:WARM_UP], rate=warmup_rate, clients=64, headers=marketing)
        await rb.receipts_for(reader, set(ids[:WARM_UP]), 60)
        rb.say(f"tracing {n} handoffs at {rate:g}/s (load {rb.load_average()}) ...")
        everyone = {**rb._pids(platform), **rb.infra_pids(rb.HOME), "bench (load generator)": os.getpid()}
        with rb.CpuTimeline(everyone) as timeline:
            await rb.qualify(leads, ids[WARM_UP:], rate=rate, clients=64, headers=marketing)
            got = await rb.receipts_for(reader, set(ids[WARM_UP:]), 60)
        if got:  # up to the last receipt's storing: not the wait for receipts that never came
            timeline.until(max(_at(e.payload["stored_at"]).timestamp() for e in got))
        rb.say(timeline.summary(len(got)))
        timeline.write(rb.ROOT / "bench/results/cpu-timeline-trace.tsv")
        return got
    finally:
        await reader.stop()


async def main() -> None:
    args = rb.parse_args()
    # TRACE_SERVICES=all: every service the platform phase runs (the analytics worker and API,
    # the service desk beside the handoff's three), to see what they cost the handoff.
    every = os.environ.get("TRACE_SERVICES", "") == "all"
    args.services = rb.SERVICES_UNDER_LOAD if every else ("leads", "sales", "gateway")
    n, rate = int(os.environ.get("TRACE_N", "250")), float(os.environ.get("TRACE_RATE", "25"))
    warmup_rate = float(os.environ.get("TRACE_WARMUP_RATE", rate))
    infra = rb.fresh_infra(args)
    pause = rb.idle_backoff_ms(infra)
    rb.pace_empty_fetches(pause)
    platform = rb._platform(args, infra.kafka_bootstrap, infra.mongodb_uri, pause, "trace_")
    platform.start()
    try:
        platform.wait_ready(timeout=120)
        receipts = await run(platform, infra.kafka_bootstrap, n, rate, warmup_rate)
        async with httpx.AsyncClient() as client:
            metrics = (await client.get(platform.url("sales") + "/metrics")).text
        waits = [line for line in metrics.splitlines() if line.startswith("crm_person_key_waits_total")]
        rb.say(f"{len(receipts)}/{n} receipts (load {rb.load_average()}); sales' {waits or 'no key waits'}")
        key_of, began = await stored(infra.mongodb_uri, "trace_")
        handoffs = handoff_times(receipts, await produced_at(infra.kafka_bootstrap), key_of, began)
        print(table(stages(handoffs)))
        print(slowest(handoffs))
        write_tsv(handoffs, rb.ROOT / "bench/results/trace-handoffs.tsv")
    finally:
        platform.stop()
        infra.stop()


if __name__ == "__main__":
    asyncio.run(main())
