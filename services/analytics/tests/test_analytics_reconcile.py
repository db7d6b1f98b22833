"""Analytics converges: figures short of the log are found, reported and repaired.

Against the real broker and mongod. The first test drives ``analytics.reconcile``
in-process over a slice of the real topics; the second runs the faust worker as
a process in the state a broker loss leaves behind: its group has committed
offsets past events whose facts are in no changelog (the broker dropped those
writes), so after the restart its tables come back without them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from analytics.domain.engine import AnalyticsState, apply
from analytics.domain.snapshot import Reconciliation
from analytics.main import create_app
from analytics.reconcile import reconcile
from analytics.store import MongoReconciliations
from analytics.worker import SOURCE_TOPICS
from crm_contracts import Envelope, decode
from crm_contracts.registry import model_for
from crm_platform.testing import auth_headers, eventually, produce_envelope, running_app, start_group_at_end
from kafka.admin import KafkaAdminClient
from pymongo import AsyncMongoClient, MongoClient

pytestmark = pytest.mark.integration

STAGES = ["captured", "qualified", "accepted", "won", "onboarded"]


def journey_events(journey: Any, run: str, leads: int) -> tuple[str, list[Envelope]]:
    """``leads`` full journeys on a channel of this run's own, each with two receipts."""
    channel = f"rec-{run}"
    base = datetime.now(UTC) - timedelta(hours=3)  # its last step is 2 h in: not in the future
    events: list[Envelope] = []
    for i in range(leads):
        lead, deal = f"lead-{run}-{i}", f"deal-{run}-{i}"
        qualified = journey.qualified(lead, channel, when=60, base=base)
        won = journey.won(deal, lead, when=3600, base=base)
        events += [
            journey.captured(lead, channel, when=0, base=base),
            qualified,
            journey.verdict(lead, "accepted", when=360, base=base),
            won,
            journey.onboarded(deal, f"acc-{run}-{i}", when=3602, base=base),
            journey.first_step(deal, f"acc-{run}-{i}", when=7200, base=base),
            journey.receipt("lead-qualified", str(qualified.event_id), 0.004, when=60, base=base),
            journey.receipt("deal-won", str(won.event_id), 0.007, when=3600, base=base),
        ]
    return channel, events


async def produce_all(bootstrap: str, events: list[Envelope]) -> None:
    for env in events:
        await produce_envelope(bootstrap, model_for(env.event_type, env.schema_version).topic, env)


async def end_offsets(bootstrap: str) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()
        tps = [
            TopicPartition(t, p)
            for t in SOURCE_TOPICS
            for p in sorted(consumer.partitions_for_topic(t) or [])
        ]
        return dict(await consumer.end_offsets(tps))
    finally:
        await consumer.stop()


async def test_reconciliation_finds_what_the_worker_lacked_repairs_it_and_then_finds_nothing(
    kafka_bootstrap: str, journey: Any
) -> None:
    run = uuid.uuid4().hex[:8]
    channel, events = journey_events(journey, run, leads=5)
    since = await end_offsets(kafka_bootstrap)
    await produce_all(kafka_bootstrap, events)
    upto = await end_offsets(kafka_bootstrap)
    # The worker folded every event, but the facts of two journeys did not survive
    # (their changelog writes were lost): its state holds only the other three.
    live = AnalyticsState()
    lost = {f"{kind}-{run}-{i}" for kind in ("lead", "deal", "acc") for i in (3, 4)}
    for env in events:
        if env.partition_key not in lost and not _receipt_of_lost(env, events, lost):
            apply(live, env, decode(env))
    assert live.figures.channels[channel] == dict.fromkeys(STAGES, 3)

    report = await reconcile(live, kafka_bootstrap, upto, since=since)

    assert report is not None
    assert report.scanned_events >= len(events)
    for stage in STAGES:
        assert report.difference[f"funnel:{stage}"] >= 2, stage
    assert report.difference["transport_samples:lead-qualified"] >= 2
    assert report.difference["business_samples:deal-won"] >= 2
    assert live.figures.channels[channel] == dict.fromkeys(STAGES, 5), "repaired"

    again = await reconcile(live, kafka_bootstrap, upto, since=since)
    assert again is not None
    assert again.short == {}, "converged: a second replay finds nothing missing"
    assert again.repaired_facts == 0


def _receipt_of_lost(env: Envelope, events: list[Envelope], lost: set[str]) -> bool:
    if env.event_type != "handoff.received":
        return False
    by_id = {str(e.event_id): e for e in events}
    handoff = by_id.get(env.payload["handoff_event_id"])
    return handoff is not None and handoff.partition_key in lost


# --- the worker process after a broker loss ------------------------------------------------


@pytest.fixture
def worker_env(kafka_bootstrap: str, mongodb_uri: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    run = uuid.uuid4().hex[:10]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    env.update(
        {
            "CRM_SERVICE_NAME": "analytics",
            "CRM_ENV": "test",
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "MONGODB_URI": mongodb_uri,
            "MONGODB_DATABASE": f"t_analytics_reconcile_{run}",
            "CRM_ANALYTICS_APP_ID": f"crm-analytics-rec-{run}",
            "CRM_ANALYTICS_WORKER_DATADIR": str(tmp_path / "faust"),
            "CRM_ANALYTICS_RECONCILE_SECONDS": "2",
            "CRM_PROVISION_TOPICS": "false",
            "PYTHONUNBUFFERED": "1",
        }
    )
    yield env
    with contextlib.suppress(Exception):
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        try:
            admin.delete_topics(
                [f"{env['CRM_ANALYTICS_APP_ID']}-{t}-changelog" for t in ("leads", "deals", "receipts")]
            )
        finally:
            admin.close()
    client: MongoClient[dict[str, object]] = MongoClient(mongodb_uri, serverSelectionTimeoutMS=3000)
    with contextlib.suppress(Exception), client:
        client.drop_database(env["MONGODB_DATABASE"])


def start_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "analytics.worker"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


async def test_a_worker_restarted_after_a_broker_loss_converges_to_the_log(
    worker_env: dict[str, str],
    kafka_bootstrap: str,
    mongodb_uri: str,
    make_settings: Any,
    journey: Any,
    tmp_path: Path,
) -> None:
    run = uuid.uuid4().hex[:8]
    channel, events = journey_events(journey, run, leads=3)
    await produce_all(kafka_bootstrap, events)
    # The state a broker loss leaves: offsets committed, facts in no changelog.
    await start_group_at_end(kafka_bootstrap, worker_env["CRM_ANALYTICS_APP_ID"], list(SOURCE_TOPICS))
    log_path = tmp_path / "worker.log"
    proc = start_worker(worker_env, log_path)
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_uri, tz_aware=True)
    db = mongo[worker_env["MONGODB_DATABASE"]]
    try:

        async def first_report() -> Reconciliation | None:
            assert proc.poll() is None, log_path.read_text()[-4000:]
            return await MongoReconciliations(db).latest()

        found = await eventually(first_report, timeout=120, interval=0.5, what="the first reconciliation")
        assert found.difference["funnel:captured"] >= 3, found
        assert found.difference["funnel:onboarded"] >= 3, found
        assert found.repaired_facts >= 3 * 3

        async def converged() -> Reconciliation | None:
            assert proc.poll() is None, log_path.read_text()[-4000:]
            report = await MongoReconciliations(db).latest()
            if report is None or report.at <= found.at:
                return None
            return report if not any(report.difference.values()) else None

        await eventually(converged, timeout=60, interval=0.5, what="a reconciliation with no difference")

        settings = make_settings("analytics", MONGODB_DATABASE=worker_env["MONGODB_DATABASE"])
        async with running_app(create_app(settings)) as client:

            async def my_channel() -> dict[str, int] | None:
                counts = (
                    (await client.get("/channels", headers=auth_headers(["analyst"]))).json().get(channel)
                )
                return counts if counts == dict.fromkeys(STAGES, 3) else None

            await eventually(my_channel, timeout=30, what=f"the repaired funnel of {channel}")
            metrics = (await client.get("/metrics")).text
            assert 'crm_analytics_reconciliation_difference{figure="funnel:captured"} 0.0' in metrics
            assert "crm_analytics_reconciliation_timestamp_seconds" in metrics
    finally:
        await mongo.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
