"""The faust worker gets the platform's liveness: static membership and the progress watchdog."""

from __future__ import annotations

from pathlib import Path

from aiokafka.consumer.fetcher import Fetcher
from analytics.settings import AnalyticsSettings
from analytics.worker import SOURCE_TOPICS, AnalyticsWorker, watch_progress


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
