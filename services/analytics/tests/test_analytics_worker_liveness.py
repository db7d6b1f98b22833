"""The faust worker gets the platform's liveness: static membership and the progress watchdog."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from aiokafka.consumer.fetcher import Fetcher
from aiokafka.structs import RecordMetadata
from analytics.settings import AnalyticsSettings
from analytics.worker import SOURCE_TOPICS, AnalyticsWorker, watch_progress
from crm_contracts import envelope_for
from crm_contracts.events.common import Consent
from crm_contracts.events.leads import LeadCapturedV1
from crm_contracts.topics import LEADS_EVENTS
from crm_platform.liveness import OffsetsReader
from crm_platform.testing import eventually, produce_envelope, start_group_at_end


def settings(tmp_path: Path, **env: object) -> AnalyticsSettings:
    return AnalyticsSettings.model_validate(
        {
            "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
            "MONGODB_URI": "mongodb://127.0.0.1:1",
            "CRM_ANALYTICS_APP_ID": "crm-analytics-liveness",
            "CRM_ANALYTICS_WORKER_DATADIR": str(tmp_path / "faust"),
            **env,
        }
    )


def test_the_worker_is_a_static_member_when_given_an_instance_id(tmp_path: Path) -> None:
    worker = AnalyticsWorker(settings(tmp_path, CRM_CONSUMER_INSTANCE_ID="analytics-worker-7d9f"))
    assert worker.app.conf.consumer_group_instance_id == "analytics-worker-7d9f"


def test_the_worker_watches_its_group_and_exits_on_a_stall(tmp_path: Path) -> None:
    s = settings(tmp_path, CRM_CONSUMER_STALL_SECONDS=42)
    worker = AnalyticsWorker(s)
    tasks = len(worker.app._app_tasks)
    watchdog = watch_progress(worker.app, s)
    assert len(worker.app._app_tasks) == tasks + 1, "started with the app"
    assert watchdog.config.group_id == "crm-analytics-liveness"
    assert sorted(watchdog.config.topics) == sorted(SOURCE_TOPICS)
    assert watchdog.config.stall_seconds == 42
    assert watchdog.rejoin is None, "faust's consumer cannot be rejoined from outside: a stall exits"
    assert Fetcher.close.__qualname__.startswith("harden_aiokafka"), "faust's fetcher hardened too"


# --- a real worker process: killed, restarted with its instance id, consuming again -----------


def _spawn(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "analytics.worker"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


async def _consumed_past(bootstrap: str, group: str, record: RecordMetadata) -> bool:
    """True once ``group`` has committed past ``record``: the worker consumed that very record.

    Only the record this test produced is awaited, not every partition's end: other traffic
    on the shared broker (or a record still in flight elsewhere) cannot hold the check back.
    """
    reader = OffsetsReader(bootstrap, "liveness-test", timeout=5)
    try:
        tp = TopicPartition(record.topic, record.partition)
        committed = (await reader.read(group, {tp})).committed
        return (committed[tp] or 0) > record.offset
    finally:
        await reader.close()


async def _captured(bootstrap: str, name: str) -> RecordMetadata:
    event = LeadCapturedV1(
        lead_id=f"lead-{name}",
        email=f"{name}@example.com",
        name=name,
        company="Acme",
        source_channel="web",
        consent=Consent(marketing_email=True),
        merged=False,
    )
    return await produce_envelope(
        bootstrap, LEADS_EVENTS, envelope_for(event, source="test", correlation_id=name)
    )


@pytest.mark.integration
async def test_a_killed_worker_restarted_with_its_instance_id_consumes_again(
    kafka_bootstrap: str, mongodb_uri: str, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:10]
    app_id = f"crm-analytics-static-{run}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    env.update(
        {
            "CRM_SERVICE_NAME": "analytics",
            "CRM_ENV": "test",
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "MONGODB_URI": mongodb_uri,
            "MONGODB_DATABASE": f"t_analytics_static_{run}",
            "CRM_ANALYTICS_APP_ID": app_id,
            "CRM_ANALYTICS_WORKER_DATADIR": str(tmp_path / "faust"),
            "CRM_PROVISION_TOPICS": "false",
            "CRM_CONSUMER_INSTANCE_ID": f"analytics-worker-{run}",
            "PYTHONUNBUFFERED": "1",
        }
    )
    await start_group_at_end(kafka_bootstrap, app_id, list(SOURCE_TOPICS))
    log_path = tmp_path / "worker.log"
    procs = [_spawn(env, log_path)]

    try:
        before = await _captured(kafka_bootstrap, f"before-{run}")
        await eventually(
            lambda: _consumed_past(kafka_bootstrap, app_id, before),
            timeout=90,
            interval=0.5,
            what="first worker consumed",
        )
        procs[0].kill()  # no LeaveGroup: its member stays in the group
        procs[0].wait()
        procs.append(_spawn(env, log_path))
        after = await _captured(kafka_bootstrap, f"after-{run}")
        # No broker restart, no eviction on the emulator: only static membership gives
        # the restarted worker its partitions.
        await eventually(
            lambda: _consumed_past(kafka_bootstrap, app_id, after),
            timeout=90,
            interval=0.5,
            what="restarted worker consumed",
        )
    except AssertionError:
        # faust's recovery tables are long and say nothing here; keep the lines that do.
        lines = [line for line in log_path.read_text().splitlines() if "+-----" not in line]
        print("\n".join(lines[-80:]))
        raise
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
