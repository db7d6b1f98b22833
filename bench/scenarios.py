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
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from crm_contracts import envelope_for, utcnow
from crm_contracts.envelope import new_event_id
from crm_contracts.events.common import Behaviour, Consent, Contact, ScoreReason, sealed_email
from crm_contracts.events.leads import LeadCapturedV1, LeadQualifiedV1
from crm_contracts.events.platform import HandoffReceivedV1
from crm_contracts.events.sales import LeadVerdictV1, Verdict
from crm_contracts.topics import LEAD_QUALIFIED, LEADS_PERSON_KEYS
from crm_platform import shredding
from crm_platform.devinfra.launcher import Platform
from crm_platform.kafka import make_consumer, make_producer
from crm_platform.kafka_security import aiokafka_security
from crm_platform.outbox import RELAY_BATCH_BYTES, rfc3339, wire_record
from crm_platform.pseudonym import email_hash
from profiling import profiled
from pymongo import AsyncMongoClient
from system import RssSampler, cpu_ms_per_op, cpu_snapshot, mongo_top, peak_rss_mb, rss_mb, top_ms_per_op

# py-spy profiles of the drain (BENCH_PROFILE), beside run_bench's
PROFILE_DIR = Path(__file__).resolve().parent / "results/profile"


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


async def bulk_capture(
    gateway: str, headers: dict[str, str], *, total: int, per_request: int, clients: int, prefer: str = ""
) -> dict[str, Any]:
    """Capture ``total`` new leads in requests of ``per_request`` with ``clients`` at once;
    ``prefer``: the requests' ``Prefer`` header (``return=minimal``: ids and verdicts answered,
    as a loader asks; empty: every lead answered whole)."""
    run = uuid.uuid4().hex[:6]
    headers = {**headers, "Prefer": prefer} if prefer else headers
    batches = iter(range(0, total, per_request))
    accepted = 0
    failures: list[str] = []
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=gateway, headers=headers, timeout=120) as client:

        async def worker() -> None:
            nonlocal accepted
            for start in batches:
                leads = [_bulk_lead(run, i) for i in range(start, min(start + per_request, total))]
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
        "prefer": prefer,
        "request_p99_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000,
        "failures": len(failures),
    }


def _bulk_lead(run: str, i: int) -> dict[str, Any]:
    """The ``i``-th new lead of a bulk capture run (a new email each)."""
    return {
        "name": f"Bulk {i}",
        "email": f"bulk-{run}-{i}@example.com",
        "company": "Bulk Co",
        "source_channel": "web_form",
        "consent": {"marketing_email": True},
    }


def _backlog_handoff(lead_id: str) -> LeadQualifiedV1:
    """The one handoff every backlog record copies (v1, or sealed into v2), ``lead_id`` a
    placeholder each copy fills in."""
    return LeadQualifiedV1(
        lead_id=lead_id,
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


def _handoff_template(run: str) -> bytes:
    """One lead.qualified envelope whose ids are placeholders, so n copies cost no validation."""
    event = _backlog_handoff(f"bl-{run}-LEADNUM")
    env = envelope_for(event, source="leads", correlation_id=f"bl-{run}-LEADNUM")
    doc = env.model_dump(mode="json")
    doc["event_id"] = "EVENTID"
    return json.dumps(doc).encode()


# How the backlog's handoffs are stored on the broker: as leads' outbox relay produces them
# (its batches compressed with CRM_OUTBOX_COMPRESSION's default, zstd, since the tenth session;
# 256 KiB batches). BENCH_BACKLOG_COMPRESSION=none produces them uncompressed in 16 KiB batches,
# as every drain figure before the eleventh session did.
BACKLOG_COMPRESSION = os.environ.get("BENCH_BACKLOG_COMPRESSION", "zstd")


def _backlog_producer(bootstrap: str) -> Any:
    if BACKLOG_COMPRESSION == "none":
        return make_producer(bootstrap, "crm-bench-backlog")
    return make_producer(
        bootstrap, "crm-bench-backlog", max_batch_size=RELAY_BATCH_BYTES, compression=BACKLOG_COMPRESSION
    )


# Which handoffs the backlog holds: 2 (the default since the twelfth session), ``lead.qualified``
# v2 sealed, each a person of its own whose key record (``lead.person_key_issued`` on
# ``crm.leads.person-keys``) is published just ahead of it, as leads' relay publishes a handoff
# since the sixth session; 1: the plaintext v1 handoffs every earlier drain figure measured.
BACKLOG_VERSION = int(os.environ.get("BENCH_BACKLOG_VERSION", "2"))


async def produce_handoffs(bootstrap: str, n: int) -> str:
    """Produce ``n`` distinct lead-qualified handoffs (:data:`BACKLOG_VERSION`; v2 each after
    its person key record); returns the run's lead id prefix."""
    if BACKLOG_VERSION == 2:
        return await produce_sealed_handoffs(bootstrap, n)
    run = uuid.uuid4().hex[:8]
    template = _handoff_template(run)
    producer = _backlog_producer(bootstrap)
    await producer.start()
    try:
        pending = []
        for i in range(n):
            event_id = str(new_event_id())  # as leads makes an event's id
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


async def produce_sealed_handoffs(bootstrap: str, n: int) -> str:
    """``n`` sealed handoffs as leads' relay publishes them: per handoff a new person (own
    e-mail, person id and AES key), its key record, then the ``lead.qualified`` v2 sealed with
    that key (the relay's values and headers, :func:`crm_platform.outbox.wire_record`)."""
    run = uuid.uuid4().hex[:8]
    handoff, issued = _sealed_templates()
    producer = _backlog_producer(bootstrap)
    await producer.start()
    try:
        pending = []
        for i in range(n):
            lead = f"bl-{run}-{i}"
            for topic, key, envelope in _sealed_pair(handoff, issued, lead, f"backlog-{run}-{i}@example.com"):
                value, headers = wire_record(envelope, rfc3339(utcnow()))
                pending.append(await producer.send(topic, value, key=key.encode(), headers=headers))
            if len(pending) >= 4000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return f"bl-{run}-"


def _sealed_templates() -> tuple[dict[str, Any], dict[str, Any]]:
    """A sealed handoff's envelope and its key record's (JSON values), sealed once by
    :func:`crm_platform.shredding.sealed_event`; :func:`_sealed_pair` fills in each handoff."""
    plain = _backlog_handoff("LEAD")
    sealed, [issued] = shredding.sealed_event(plain, "leads")

    def dumped(event: Any) -> dict[str, Any]:
        return envelope_for(event, source="leads", correlation_id="LEAD").model_dump(mode="json")

    return dumped(sealed), dumped(issued)


def _sealed_pair(
    handoff: dict[str, Any], issued: dict[str, Any], lead: str, email: str
) -> list[tuple[str, str, dict[str, Any]]]:
    """(topic, record key, envelope) of one new person's key record and handoff, in the order
    leads' relay publishes them (the key first: crm_platform.shredding._share)."""
    key, person_id = shredding.new_key(), shredding.new_person_id()
    fields = shredding.PersonFields(email=email, name="Backlog Lead")
    sealed = shredding.seal(key, person_id, "leads", fields).model_dump(mode="json")
    payload = handoff["payload"]
    contact = {**payload["contact"], "email": sealed_email(person_id)}
    key_record = {
        **issued,
        "event_id": str(new_event_id()),  # each record an id made as leads makes it
        "correlation_id": lead,
        "payload": {
            **issued["payload"],
            "person_id": person_id,
            "key": shredding.encode_key(key),
            "email_hash": email_hash(email),  # v2: sales stores it with its copy of the key
        },
    }
    sealed_handoff = {
        **handoff,
        "event_id": str(new_event_id()),
        "correlation_id": lead,
        "payload": {**payload, "lead_id": lead, "contact": contact, "sealed_contact": sealed},
    }
    return [(LEADS_PERSON_KEYS, person_id, key_record), (LEAD_QUALIFIED, lead, sealed_handoff)]


def _history_templates(run: str) -> list[tuple[str, bytes, bytes]]:
    """A journey's events (topic, event type, envelope) with placeholder ids: a capture, its
    qualification, sales' receipt of it, sales' verdict."""
    lead, now = f"hi-{run}-LEADNUM", utcnow()
    contact = Contact(name="History Lead", email="history@example.com")
    consent = Consent(marketing_email=True)
    events = [
        LeadCapturedV1(
            lead_id=lead,
            email=contact.email,
            name=contact.name,
            company="History Co",
            source_channel="web_form",
            consent=consent,
            merged=False,
        ),
        LeadQualifiedV1(
            lead_id=lead,
            contact=contact,
            company="History Co",
            score=50.0,
            threshold=40.0,
            score_reasons=[],
            source_channel="web_form",
            behaviour_summary={},
            consent=consent,
            qualified_at=now,
        ),
        HandoffReceivedV1(
            handoff="lead-qualified",
            handoff_event_id="QEVENTID",
            handoff_event_type="lead.qualified",
            from_department="marketing",
            to_department="sales",
            occurred_at=now,
            stored_at=now,
            transport_latency_seconds=0.004,
        ),
        LeadVerdictV1(lead_id=lead, verdict=Verdict.ACCEPTED, decided_by="rep-1"),
    ]
    sources = ("leads", "leads", "sales", "sales")
    out = []
    for event, source in zip(events, sources, strict=True):
        doc = envelope_for(event, source=source, correlation_id=lead).model_dump(mode="json")
        doc["event_id"] = "QEVENTID" if isinstance(event, LeadQualifiedV1) else "EVENTID"
        out.append((event.topic, event.event_type.encode(), json.dumps(doc).encode()))
    return out


async def produce_history(bootstrap: str, journeys: int) -> int:
    """A replayable history straight onto the worker's topics, no service involved: ``journeys``
    leads captured, qualified, received by sales and accepted (4 events each, all of types the
    analytics worker folds). Returns how many events."""
    run = uuid.uuid4().hex[:8]
    templates = _history_templates(run)
    producer = make_producer(bootstrap, "crm-bench-history")
    await producer.start()
    try:
        pending = []
        for i in range(journeys):
            lead, qualified = f"hi-{run}-{i}".encode(), str(uuid.uuid4()).encode()
            for topic, event_type, template in templates:
                event_id = str(uuid.uuid4()).encode()
                value = template.replace(b"QEVENTID", qualified).replace(b"EVENTID", event_id)
                value = value.replace(f"hi-{run}-LEADNUM".encode(), lead)
                headers = [("event_type", event_type), ("schema_version", b"1"), ("event_id", event_id)]
                pending.append(await producer.send(topic, value, key=lead, headers=headers))
            if len(pending) >= 4000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return journeys * len(templates)


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
    replicas: int = 1,
) -> dict[str, Any]:
    """Sales down, ``n`` handoffs wait in Kafka, sales back: how fast it drains them, and exactly once?

    Also the CPU each process spent per drained event (sales from when it is ready; the
    broker's and mongod's pids in ``infra``). Why long: one measurement, start to end, whose
    steps share its clocks and counters."""
    bootstrap = platform.kafka_bootstrap
    platform.stop(("sales",))
    say(
        f"backlog: sales stopped, producing {n} lead-qualified v{BACKLOG_VERSION} handoffs "
        f"(compression {BACKLOG_COMPRESSION}) ..."
    )
    prefix = await produce_handoffs(bootstrap, n)
    backlog, keys = await group_lag(bootstrap, "sales", [LEAD_QUALIFIED]), await _key_lag(bootstrap)
    say(f"  {backlog} handoffs and {keys} key records wait for sales; starting it ...")
    ops_before, top_before = await mongod_operations(mongodb_uri), await mongo_top(mongodb_uri)
    started = time.perf_counter()
    platform.start(("sales",))
    extra = [_start_replica(platform, "sales", i) for i in range(1, replicas)]
    await asyncio.to_thread(platform.wait_ready, 90, ("sales",))
    for _, port, _ in extra:
        await _wait_ready(port, 90)
    ready = time.perf_counter()
    everyone = {**{name: p.pid for name, p in platform.procs.items() if p.poll() is None}, **(infra or {})}
    everyone.update({name: proc.pid for name, _, proc in extra})
    cpu_before = cpu_snapshot(everyone)
    lag = backlog
    sales = {"sales": platform.procs["sales"].pid, **{n: proc.pid for n, _, proc in extra}}
    with profiled("drain", {"sales": platform.procs["sales"].pid}, PROFILE_DIR), RssSampler(sales) as rss:
        while (lag > 0 or keys > 0) and time.perf_counter() - ready < max_seconds:
            await asyncio.sleep(1.0)
            lag, keys = await group_lag(bootstrap, "sales", [LEAD_QUALIFIED]), await _key_lag(bootstrap)
    finished = time.perf_counter()
    peak = {name: round(mb, 1) for name, mb in rss.peak.items()}
    drained = backlog - lag
    cpu = cpu_ms_per_op(cpu_before, cpu_snapshot(everyone), drained)
    _stop_replicas(extra)
    say(f"  CPU ms per drained event: {cpu}")
    ops = {k: v - ops_before.get(k, 0) for k, v in (await mongod_operations(mongodb_uri)).items()}
    per_event = {k: round(v / drained, 2) for k, v in ops.items() if v} if drained else {}
    say(f"  mongod operations per drained event (sales' start-up included): {per_event}")
    top = top_ms_per_op(top_before, await mongo_top(mongodb_uri), drained)
    say(f"  mongod time per drained event by collection (ms, `top`: lock held, waits included): {top}")
    items, doubled, unopened = await _inbox_check(mongodb_uri, platform.db_prefix + "sales", prefix)
    rate = drained / (finished - ready) if finished > ready else 0.0
    say(
        f"  drained {drained}/{backlog} in {finished - ready:.1f} s after ready ({rate:.0f}/s; "
        f"{ready - started:.1f} s to start); inbox items {items} of {n}, doubled {doubled}, "
        f"still sealed {unopened}, key records left {keys}; sales' peak resident memory (MB) {peak}"
    )
    return {
        "events": n,
        "handoff_version": BACKLOG_VERSION,
        "unopened": unopened,
        "key_lag": keys,
        "compression": BACKLOG_COMPRESSION,
        "backlog": backlog,
        "drained": drained,
        "seconds": round(finished - ready, 2),
        "startup_seconds": round(ready - started, 2),
        "rate": rate,
        "complete": lag == 0 and keys == 0,
        "inbox_items": items,
        "lost": max(0, n - items) if lag == 0 else None,
        "doubled": doubled,
        "mongod_ops_per_event": per_event,
        "mongod_top_ms_per_event": top,
        "cpu_ms_per_event": cpu,
        "rss_mb": peak,
    }


def _start_replica(platform: Platform, name: str, i: int) -> tuple[str, int, subprocess.Popen[bytes]]:
    """Another process of service ``name`` (its ``i``-th replica: same database and consumer
    group, its own HTTP port and static group member id), as production runs several pods."""
    spec = platform.spec(name)
    port = platform.port(name) + 10 * i
    env = {**platform.env_for(spec), "CRM_HTTP_PORT": str(port)}
    env["CRM_CONSUMER_INSTANCE_ID"] = f"{name}{platform.group_suffix}-{i}"
    with (platform.logdir / f"{name}-{i}.log").open("ab") as logfile:
        proc = subprocess.Popen(
            [sys.executable, "-m", spec.module], env=env, stdin=subprocess.DEVNULL,
            stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    return f"{name}-{i}", port, proc


async def _wait_ready(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2.0) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise TimeoutError(f"replica on port {port} not ready after {timeout:.0f} s")


def _stop_replicas(extra: list[tuple[str, int, subprocess.Popen[bytes]]]) -> None:
    for _, _, proc in extra:
        proc.terminate()
    for _, _, proc in extra:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


async def mongod_operations(mongodb_uri: str) -> dict[str, int]:
    """mongod's operation counters (serverStatus ``opcounters``; a transaction's commit is a
    ``command``), to count round trips per event independently of the machine's load."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_uri)
    try:
        status = await client.admin.command("serverStatus")
        return {k: int(v) for k, v in status["opcounters"].items()}
    finally:
        await client.close()


async def outbox_published(mongodb_uri: str, database: str, *, timeout: float) -> float:
    """Wait until ``database``'s outbox holds no unpublished row; returns when (perf_counter).

    A bulk capture is answered before its events reach Kafka (the relay publishes after the
    commit), so a rate that stops at the last answer would reward a lagging relay."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_uri)
    deadline = time.perf_counter() + timeout
    try:
        while await client[database]["outbox"].count_documents({"published": False}, limit=1):
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{database}'s outbox still had unpublished events after {timeout:.0f} s")
            await asyncio.sleep(0.02)
        return time.perf_counter()
    finally:
        await client.close()


async def stored_lead_ids(mongodb_uri: str, database: str) -> list[str]:
    """The ids of every lead ``database`` holds (``BENCH_PHASES=handoff``: bulk-captured leads)."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_uri)
    try:
        return [str(d["_id"]) async for d in client[database]["leads"].find({}, {"_id": 1})]
    finally:
        await client.close()


async def _key_lag(bootstrap: str) -> int:
    """The person key records sales' key consumer has not committed yet (none in a v1 backlog)."""
    if BACKLOG_VERSION != 2:
        return 0
    return await group_lag(bootstrap, shredding.key_group("sales"), [LEADS_PERSON_KEYS])


async def _inbox_check(mongodb_uri: str, database: str, prefix: str) -> tuple[int, int, int]:
    """The run's inbox items, those doubled, and those whose contact is still the sealed stand-in."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_uri)
    try:
        inbox = client[database]["inbox"]
        match = {"lead_id": {"$regex": f"^{prefix}"}}
        items = await inbox.count_documents(match)
        sealed = {"handoff.contact.email": {"$regex": "@sealed[.]example$"}}
        unopened = await inbox.count_documents({**match, **sealed})
        cursor = await inbox.aggregate(
            [
                {"$match": match},
                {"$group": {"_id": "$lead_id", "n": {"$sum": 1}}},
                {"$match": {"n": {"$gt": 1}}},
                {"$count": "doubled"},
            ]
        )
        doubled = await cursor.to_list()
        return items, (doubled[0]["doubled"] if doubled else 0), unopened
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
    """A fresh faust worker replays ``topics`` from the beginning: how fast it folds them, and
    the CPU milliseconds per event of the worker and of ``others`` (the broker, mongod).

    The folds are counted by the worker itself (``crm_events_consumed_total`` on its metrics
    port, polled every 0.25 s): the rate is the events folded from the first poll that saw one
    to the poll that saw them all, over that span (a measured figure, not a bound); the CPU is
    taken over the same span. ``seconds_from_start`` is from the process's start to the last
    fold (start-up, group join and table recovery included); ``committed_seconds`` until the
    group's committed offsets reached the end (faust commits every 2.8 s). ``extra_env`` goes
    to the worker's process (``bench/replay.py`` runs another tree's worker with it);
    ``profile_dir`` records it with py-spy (BENCH_PROFILE); ``drop_changelogs`` deletes the
    worker's changelog topics afterwards (the embedded broker's CPU grows with its state: the
    next replay then starts from the same state). Why long: one measurement, start to end,
    whose steps share its clocks and counters."""
    bootstrap = platform.kafka_bootstrap
    group = f"crm-analytics-replay-{uuid.uuid4().hex[:6]}"
    total = await group_lag(bootstrap, group, topics)
    web_port = _free_port()
    env = {"CRM_ANALYTICS_WORKER_WEB_PORT": str(web_port), **(extra_env or {})}
    worker = _replay_worker(platform, group, env)
    say(f"analytics replay: a fresh worker ({group}) reads {total} events ...")
    began = time.perf_counter()
    worker.start()
    pids = {"analytics-worker": worker.procs["analytics-worker"].pid, **(others or {})}
    try:
        with profiled("replay", {"analytics-worker": pids["analytics-worker"]}, profile_dir or PROFILE_DIR):
            folds = await _watch_folds(f"http://127.0.0.1:{web_port}/metrics", total, max_seconds, pids)
            lag = await _wait_committed(bootstrap, group, topics, began + max_seconds)
            committed = time.perf_counter()
            # The worker's resident memory with every folded fact held (its state grows per lead).
            rss = {"now": rss_mb(pids["analytics-worker"]), "peak": peak_rss_mb(pids["analytics-worker"])}
    finally:
        worker.stop()
        if drop_changelogs:
            await _drop_topics(bootstrap, prefix=f"{group}-")
    if folds.first is None or folds.last is None or folds.last[0] <= folds.first[0]:
        say(f"  the worker folded {folds.folded} of {total} events (too few polls to time them)")
        return {"events": total, "replayed": folds.folded, "rate": 0.0, "complete": False}
    (t0, n0), (t1, n1) = folds.first, folds.last
    rate = (n1 - n0) / (t1 - t0)
    per_event = cpu_ms_per_op(folds.cpu_first, folds.cpu_last, n1 - n0, digits=3)
    say(
        f"  folded {n1}/{total} events; {rate:.0f} events/s ({n1 - n0} events in {t1 - t0:.2f} s, "
        f"first fold {t0 - began:.1f} s after start); CPU ms per event {per_event}; "
        f"all committed {committed - began:.1f} s after start (lag {lag}); worker RSS MB {rss}"
    )
    return {
        "cpu_ms_per_event": per_event,
        "worker_rss_mb": rss,
        "events": total,
        "replayed": n1,
        "rate": rate,
        "seconds": round(t1 - t0, 2),
        "startup_seconds": round(t0 - began, 2),
        "seconds_from_start": round(t1 - began, 2),
        "committed_seconds": round(committed - began, 2),
        "complete": n1 >= total and lag == 0,
        "lower_bound": False,
    }


def _free_port() -> int:
    """A port nobody listens on now, for the replay worker's metrics (each run its own: a
    previous worker's socket may linger)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


class _Folds:
    """What :func:`_watch_folds` saw: (time, folded) at the first poll with a fold and at the
    poll that saw them all (or the last), with CPU snapshots at both."""

    def __init__(self) -> None:
        self.first: tuple[float, int] | None = None
        self.last: tuple[float, int] | None = None
        self.folded = 0
        self.cpu_first: dict[str, float] = {}
        self.cpu_last: dict[str, float] = {}


async def _watch_folds(url: str, total: int, max_seconds: float, pids: Mapping[str, int]) -> _Folds:
    """Poll the worker's fold counter every 0.25 s until it reaches ``total`` (or ``max_seconds``)."""
    folds = _Folds()
    began = time.perf_counter()
    async with httpx.AsyncClient(timeout=2.0) as client:
        while folds.folded < total and time.perf_counter() - began < max_seconds:
            await asyncio.sleep(0.25)
            try:
                text = (await client.get(url)).text
            except httpx.HTTPError:
                continue  # not serving yet
            folded, now = _folded(text), time.perf_counter()
            if folded > folds.folded:
                cpu = cpu_snapshot(pids)
                if folds.first is None:
                    folds.first, folds.cpu_first = (now, folded), cpu
                folds.last, folds.cpu_last, folds.folded = (now, folded), cpu, folded
    return folds


def _folded(metrics_text: str) -> int:
    """Events the worker took off its topics, every outcome (``crm_events_consumed_total``)."""
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith("crm_events_consumed_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


async def _wait_committed(bootstrap: str, group: str, topics: tuple[str, ...], deadline: float) -> int:
    """Poll the group's lag until 0 or ``deadline``; returns the lag left."""
    lag = await group_lag(bootstrap, group, topics)
    while lag > 0 and time.perf_counter() < deadline:
        await asyncio.sleep(0.25)
        lag = await group_lag(bootstrap, group, topics)
    return lag


async def _drop_topics(bootstrap: str, *, prefix: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **aiokafka_security())
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()
