"""The faust worker as a real process against the real broker and mongod.

A unique faust app id (so a fresh consumer group and fresh changelog topics) and a
unique database per run. The group starts at the topics' current end, so what
earlier suites left in the shared broker does not slow the test down; events other
tests produce meanwhile arrive too: exact figures are asserted on this run's own
channel, the rest as lower bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from analytics.domain import kpis
from analytics.domain.engine import AnalyticsState, apply, rebuild_figures
from analytics.domain.facts import stored_json
from analytics.main import create_app
from analytics.worker import SOURCE_TOPICS
from crm_contracts import Envelope
from crm_contracts.registry import model_for
from crm_contracts.topics import DEAL_WON, LEADS_EVENTS, dead_letter_topic
from crm_platform.dead_letters import Accepted, classify
from crm_platform.testing import (
    TopicReader,
    auth_headers,
    eventually,
    produce,
    produce_envelope,
    running_app,
    start_group_at_end,
)
from kafka.admin import KafkaAdminClient
from pymongo import MongoClient

pytestmark = pytest.mark.integration

ANALYST = auth_headers(["analyst"])
DLQ = dead_letter_topic("analytics")


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    log_path: Path

    def log_tail(self) -> str:
        return self.log_path.read_text()[-4000:]


@pytest.fixture
async def run_id(kafka_bootstrap: str) -> str:
    """This run's id; the worker's group (``crm-analytics-test-<id>``) starts at the topics' end."""
    run = uuid.uuid4().hex[:10]
    await start_group_at_end(kafka_bootstrap, f"crm-analytics-test-{run}", list(SOURCE_TOPICS))
    return run


@pytest.fixture
def worker(kafka_bootstrap, mongodb_uri, tmp_path, run_id):
    """Start ``python -m analytics.worker``; the test stops it with SIGTERM."""
    run = run_id
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    env.update(
        {
            "CRM_SERVICE_NAME": "analytics",
            "CRM_ENV": "test",
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "MONGODB_URI": mongodb_uri,
            "MONGODB_DATABASE": f"t_analytics_worker_{run}",
            "CRM_ANALYTICS_APP_ID": f"crm-analytics-test-{run}",
            # Static membership, as `make run` and Kubernetes give it: a worker started again
            # after a SIGKILL takes its partitions back (the embedded broker never evicts).
            "CRM_CONSUMER_INSTANCE_ID": f"analytics-worker-test-{run}",
            "CRM_ANALYTICS_WORKER_DATADIR": str(tmp_path / "faust"),
            "CRM_PROVISION_TOPICS": "false",
            # The group starts at the end on purpose; reconciling would replay (and count)
            # all the history before it: test_analytics_reconcile.py covers that.
            "CRM_ANALYTICS_RECONCILE_SECONDS": "0",
            "CRM_ANALYTICS_WORKER_WEB_PORT": str(free_port()),
            "CRM_CONSUMER_WATCHDOG_SECONDS": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "analytics.worker"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    handle = WorkerProcess(proc, env, log_path)
    try:
        yield handle
    finally:
        proc = handle.proc  # the one running now: a test may have started it again (respawn)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.returncode not in (0, None):
            print(log_path.read_text()[-6000:])
        forget_run(kafka_bootstrap, mongodb_uri, env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def forget_run(bootstrap: str, mongodb_uri: str, env: dict[str, str]) -> None:
    """Best effort: drop this run's changelog topics and database from the shared infra."""
    app_id = env["CRM_ANALYTICS_APP_ID"]
    with contextlib.suppress(Exception):
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            admin.delete_topics([f"{app_id}-{t}-changelog" for t in ("leads", "deals", "receipts")])
        finally:
            admin.close()
    client: MongoClient[dict[str, object]] = MongoClient(mongodb_uri, serverSelectionTimeoutMS=3000)
    with contextlib.suppress(Exception), client:
        client.drop_database(env["MONGODB_DATABASE"])


async def partitions(consumer: AIOKafkaConsumer, *topics: str) -> list[TopicPartition]:
    await consumer.topics()  # loads the cluster metadata; partitions_for_topic is sync
    return [
        TopicPartition(topic, p)
        for topic in topics
        for p in sorted(consumer.partitions_for_topic(topic) or [])
    ]


async def caught_up(bootstrap: str, group: str) -> bool:
    """Has the worker committed every offset up to the current end of its topics?"""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await consumer.start()
    await admin.start()
    try:
        ends = await consumer.end_offsets(await partitions(consumer, *SOURCE_TOPICS))
        committed = await admin.list_consumer_group_offsets(group)
        return all(end == 0 or (tp in committed and committed[tp].offset >= end) for tp, end in ends.items())
    finally:
        await admin.close()
        await consumer.stop()


async def test_worker_computes_funnel_and_latencies_and_dead_letters(
    worker, kafka_bootstrap, make_settings, journey
):
    run = uuid.uuid4().hex[:8]
    lead, deal, channel = f"lead-{run}", f"deal-{run}", f"it-{run}"
    base = datetime.now(UTC) - timedelta(hours=3)  # the journey's last step is 2 h in: not in the future
    captured = journey.captured(lead, channel, when=0, base=base)
    qualified = journey.qualified(lead, channel, when=60, base=base)
    accepted = journey.verdict(lead, "accepted", when=360, base=base)
    won = journey.won(deal, lead, when=3600, base=base)
    onboarded = journey.onboarded(deal, f"acc-{run}", when=3602, base=base)
    first_step = journey.first_step(deal, f"acc-{run}", when=7200, base=base)
    receipts = [
        journey.receipt("lead-qualified", str(qualified.event_id), 0.004, when=60, base=base),
        journey.receipt("deal-won", str(won.event_id), 0.007, when=3600, base=base),
    ]
    dlq = await TopicReader(kafka_bootstrap, DLQ).start()
    try:
        # Out of order (onboarding before the win, the verdict first) and redelivered.
        for env in [
            accepted,
            onboarded,
            captured,
            qualified,
            captured,
            won,
            first_step,
            *receipts,
            qualified,
            won,
            onboarded,
            receipts[0],
        ]:
            await produce_envelope(kafka_bootstrap, model_for(env.event_type, 1).topic, env)
        garbage = f"not an envelope {run}".encode()
        await produce(
            kafka_bootstrap,
            LEADS_EVENTS,
            garbage,
            key=f"bad-{run}".encode(),
            headers=[("x-test-run", run.encode())],
        )
        future = json.loads(won.to_bytes())
        future["schema_version"] = 7
        await produce(kafka_bootstrap, DEAL_WON, json.dumps(future).encode(), key=f"v7-{run}".encode())

        settings = make_settings("analytics", MONGODB_DATABASE=worker.env["MONGODB_DATABASE"])
        async with running_app(create_app(settings)) as client:

            async def my_channel():
                assert worker.proc.poll() is None, worker.log_tail()
                counts = (await client.get("/channels", headers=ANALYST)).json().get(channel)
                done = counts == dict.fromkeys(["captured", "qualified", "accepted", "won", "onboarded"], 1)
                if done and await caught_up(kafka_bootstrap, worker.env["CRM_ANALYTICS_APP_ID"]):
                    return counts
                return None

            await eventually(
                my_channel,
                timeout=90,
                interval=0.5,
                what=f"the funnel of channel {channel}, all events consumed",
            )

            async def settled():
                summary = (await client.get("/summary", headers=ANALYST)).json()
                channels = summary["channels"]
                # Everything is consumed: the redeliveries changed nothing.
                assert channels[channel] == dict.fromkeys(
                    ["captured", "qualified", "accepted", "won", "onboarded"], 1
                )
                return summary

            summary = await eventually(settled, timeout=10, what="the final snapshot")
            stages = summary["funnel"]["stages"]
            assert all(stages[s] >= 1 for s in stages)
            assert summary["updated_at"] is not None
            lq = summary["handoffs"]["lead-qualified"]
            dw = summary["handoffs"]["deal-won"]
            for stats in (lq["transport"], lq["business"], dw["transport"], dw["business"]):
                assert stats["count"] >= 1
                assert 0 <= stats["p50"] <= stats["p95"] <= stats["p99"]

        def parked(records):
            mine = [r for r in records if r.key in (f"bad-{run}".encode(), f"v7-{run}".encode())]
            return mine if len(mine) == 2 else None

        mine = await dlq.wait_for(parked, timeout=30, what="both bad messages dead-lettered")
    finally:
        await dlq.stop()

    by_key = {r.key: dict(r.headers) for r in mine}
    bad = by_key[f"bad-{run}".encode()]
    assert bad["dlq_reason"] == b"malformed"
    assert bad["dlq_consumer_group"] == worker.env["CRM_ANALYTICS_APP_ID"].encode()
    assert bad["dlq_source_topic"] == LEADS_EVENTS.encode()
    assert int(bad["dlq_source_partition"]) >= 0
    assert int(bad["dlq_source_offset"]) >= 0
    assert bad["dlq_error"]
    assert bad["x-test-run"] == run.encode()  # original headers kept
    assert next(r.value for r in mine if r.key == f"bad-{run}".encode()) == garbage
    v7 = by_key[f"v7-{run}".encode()]
    assert v7["dlq_reason"] == b"unknown_version"
    assert v7["dlq_source_topic"] == DEAL_WON.encode()

    # The worker's own /metrics (faust's web server): what it consumed and
    # dead-lettered, its lag per held source partition, and how fresh the snapshot is.
    url = f"http://127.0.0.1:{worker.env['CRM_ANALYTICS_WORKER_WEB_PORT']}/metrics"

    async def scraped() -> dict[str, list[tuple[dict[str, str], float]]] | None:
        async with httpx.AsyncClient() as client:
            found = samples((await client.get(url, timeout=5)).text)
        return found if found.get("crm_consumer_lag") else None

    found = await eventually(scraped, timeout=30, what="the worker's lag series on /metrics")
    service = {"service": "analytics-worker"}

    def total(name: str, **labels: str) -> float:
        want = service | labels
        return sum(v for lbl, v in found.get(name, []) if want.items() <= lbl.items())

    assert total("crm_dead_lettered_total", topic=LEADS_EVENTS, reason="malformed") >= 1
    assert total("crm_dead_lettered_total", topic=DEAL_WON, reason="unknown_version") >= 1
    assert total("crm_events_consumed_total", outcome="dead_lettered") >= 2
    assert total("crm_events_consumed_total", event_type="deal.won", outcome="processed") >= 2  # sent twice
    lag_topics = {
        lbl["topic"] for lbl, _ in found["crm_consumer_lag"] if lbl["service"] == "analytics-worker"
    }
    assert lag_topics, found["crm_consumer_lag"]
    assert lag_topics <= set(SOURCE_TOPICS), lag_topics  # source partitions, no changelogs
    [(_, age)] = found["crm_analytics_snapshot_age_seconds"]
    assert 0 <= age < 30, age  # the snapshot holds the figures (written after each change)

    # A clean stop on SIGTERM.
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(timeout=30) == 0, worker.log_tail()


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text format -> {name: [(labels, value)]}."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def respawn(worker: WorkerProcess) -> None:
    """Start the worker again with the same app id, database and data dir (its log appended)."""
    with worker.log_path.open("ab") as log:
        worker.proc = subprocess.Popen(
            [sys.executable, "-m", "analytics.worker"],
            env=worker.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@pytest.mark.timeout(300)  # two worker start-ups and 3,000 events on a shared machine
async def test_a_worker_killed_mid_batch_loses_and_doubles_nothing(
    worker, kafka_bootstrap, make_settings, journey
):
    """The agent folds ahead of its changelog writes and acks in batches (analytics.confirm).
    Killed (SIGKILL: no flush, no commit) while folding, then started again, it ends with every
    lead counted once: what was folded but not confirmed was not acked, so it came again."""
    run = uuid.uuid4().hex[:8]
    channel, n = f"kill-{run}", 3000
    base = datetime.now(UTC) - timedelta(hours=1)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        sent = []
        for i in range(n):
            env = journey.captured(f"lead-{run}-{i}", channel, when=i * 0.001, base=base)
            value, key = env.to_bytes(), env.partition_key.encode()
            sent.append(await producer.send(LEADS_EVENTS, value, key=key, headers=env.headers()))
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
    settings = make_settings("analytics", MONGODB_DATABASE=worker.env["MONGODB_DATABASE"])
    async with running_app(create_app(settings)) as client:

        async def captured() -> int:
            counts = (await client.get("/channels", headers=ANALYST)).json().get(channel) or {}
            return int(counts.get("captured", 0))

        async def folding() -> int | None:
            assert worker.proc.poll() is None, worker.log_tail()
            return await captured() or None

        await eventually(folding, timeout=45, interval=0.2, what="the worker folding the leads")
        worker.proc.kill()
        worker.proc.wait(timeout=30)
        respawn(worker)

        async def all_counted() -> int | None:
            assert worker.proc.poll() is None, worker.log_tail()
            return n if await captured() == n else None

        await eventually(all_counted, timeout=50, interval=0.5, what=f"{n} leads counted after the restart")
        assert await captured() == n, "nothing counted twice"


def generated_history(journey, run: str, n: int, base: datetime) -> list[Envelope]:
    """``n`` journeys of every kind the funnel and the latencies fold (seeded, so a failure
    replays): captures (some merged), qualifications (some twice), accepted, rejected and
    recycled verdicts, deals won, onboardings, first steps, receipts with their latencies;
    10% of the events delivered twice, and the whole history shuffled (out of order)."""
    rng = random.Random(run)
    events: list[Envelope] = []
    for i in range(n):
        lead, deal, account = f"lead-{run}-{i}", f"deal-{run}-{i}", f"acc-{run}-{i}"
        channel, t = f"gen-{run}-{rng.randrange(3)}", rng.uniform(0, 3600)
        events.append(journey.captured(lead, channel, when=t, base=base))
        if rng.random() < 0.1:
            events.append(journey.captured(lead, channel, when=t + 5, merged=True, base=base))
        if rng.random() < 0.2:
            continue
        qualified = journey.qualified(lead, channel, when=t + 60, base=base)
        events += [
            qualified,
            journey.receipt(
                "lead-qualified", str(qualified.event_id), rng.uniform(0.001, 2), when=t + 60, base=base
            ),
        ]
        if rng.random() < 0.1:
            events.append(journey.qualified(lead, channel, when=t + 90, base=base))
        if rng.random() < 0.4:
            continue
        outcome = rng.choices(["accepted", "rejected", "recycled"], [6, 2.5, 1.5])[0]
        events.append(journey.verdict(lead, outcome, when=t + rng.uniform(100, 5000), base=base))
        if outcome != "accepted" or rng.random() < 0.5:
            continue
        won = journey.won(deal, lead, when=t + 6000, base=base)
        events += [
            won,
            journey.receipt("deal-won", str(won.event_id), rng.uniform(0.001, 2), when=t + 6000, base=base),
        ]
        if rng.random() < 0.7:
            events.append(journey.onboarded(deal, account, when=t + 6002, base=base))
        if rng.random() < 0.5:
            events.append(journey.first_step(deal, account, when=t + rng.uniform(6100, 20000), base=base))
    events += rng.sample(events, len(events) // 10)
    rng.shuffle(events)
    return events


def pure_fold(events: list[Envelope]) -> AnalyticsState:
    """The same history folded by the engine alone, in memory, with the worker's classification."""
    state = AnalyticsState()
    for env in events:
        verdict = classify(env.to_bytes(), topic=model_for(env.event_type, env.schema_version).topic)
        assert isinstance(verdict, Accepted), verdict
        apply(state, verdict.envelope, verdict.event)
    return state


async def changelog_facts(bootstrap: str, app_id: str, table: str) -> dict[str, Any]:
    """A table as its changelog holds it: the last value of each key, tombstones removed."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        tps = await partitions(consumer, f"{app_id}-{table}-changelog")
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        facts: dict[str, Any] = {}

        async def behind() -> bool:
            return any([await consumer.position(tp) < end for tp, end in ends.items()])

        while await behind():
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                for record in records:
                    key = json.loads(record.key)
                    if record.value is None:
                        facts.pop(key, None)
                    else:
                        facts[key] = json.loads(record.value)
        return facts
    finally:
        await consumer.stop()


@pytest.mark.timeout(300)  # two worker start-ups and a few thousand events on a shared machine
async def test_a_replayed_history_folds_to_the_pure_computation_across_a_restart(
    worker, kafka_bootstrap, make_settings, journey
):
    """A generated history (out of order, redelivered) through the worker, SIGKILLed while
    folding and started again: the facts in its changelogs (what a recovery rebuilds the tables
    from) are exactly those of the engine folding the same events in memory, and so are the
    funnel, the channels, the latencies and the KPIs computed from them."""
    run = uuid.uuid4().hex[:8]
    base = datetime.now(UTC) - timedelta(days=2)
    events = generated_history(journey, run, 400, base)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        sent = []
        for env in events:
            topic = model_for(env.event_type, env.schema_version).topic
            value, key = env.to_bytes(), env.partition_key.encode()
            sent.append(await producer.send(topic, value, key=key, headers=env.headers()))
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
    app_id = worker.env["CRM_ANALYTICS_APP_ID"]
    settings = make_settings("analytics", MONGODB_DATABASE=worker.env["MONGODB_DATABASE"])
    async with running_app(create_app(settings)) as client:

        async def folding() -> bool | None:
            assert worker.proc.poll() is None, worker.log_tail()
            channels = (await client.get("/channels", headers=ANALYST)).json()
            return any(name.startswith(f"gen-{run}") for name in channels) or None

        await eventually(folding, timeout=45, interval=0.2, what="the worker folding the history")
    worker.proc.kill()
    worker.proc.wait(timeout=30)
    respawn(worker)

    async def done() -> bool | None:
        assert worker.proc.poll() is None, worker.log_tail()
        return await caught_up(kafka_bootstrap, app_id) or None

    await eventually(done, timeout=120, interval=0.5, what="the history folded after the restart")
    expected = pure_fold(events)
    receipt_keys = set(expected.receipts)

    def mine(key: str) -> bool:
        return run in key or key in receipt_keys

    found: dict[str, dict[str, Any]] = {}
    for table in ("leads", "deals", "receipts", "records"):
        facts = await changelog_facts(kafka_bootstrap, app_id, table)
        found[table] = {k: v for k, v in facts.items() if mine(k)}
        # the fold's facts as their changelog stores them (analytics.domain.facts.stored_json)
        want = {k: stored_json(v) for k, v in getattr(expected, table).items() if mine(k)}
        assert found[table] == want, f"{table}: the changelog differs from the pure fold"
    assert len(found["leads"]) == 400
    assert found["deals"]
    assert found["receipts"]
    replayed = rebuild_figures(
        AnalyticsState(
            leads=found["leads"], deals=found["deals"], receipts=found["receipts"], records=found["records"]
        )
    )
    assert replayed.figures.summary() == expected.figures.summary()
    now = datetime.now(UTC)
    assert kpis.compute(found["records"], now) == kpis.compute(dict(expected.records), now)
