"""``crm-analytics-ops rebuild`` against the real broker and mongod: the figures from the log alone.

Journeys on a channel of this run's own are put on the real topics; the analytics database
serves a stale snapshot that knows nothing of them (as after a changelog lost by the
broker). A dry run reports the difference and publishes nothing; the rebuild publishes the
log's figures, which the API then serves.
"""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from analytics import cli
from analytics.domain.figures import Figures
from analytics.domain.snapshot import Snapshot
from analytics.main import create_app
from analytics.settings import AnalyticsSettings
from analytics.store import MongoSnapshots
from crm_contracts.topics import LEAD_QUALIFIED, LEADS_EVENTS
from crm_platform.mongo import connect
from crm_platform.testing import auth_headers, produce_envelope, running_app

pytestmark = pytest.mark.integration


async def _rebuild(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    out = io.StringIO()
    assert await asyncio.to_thread(cli.main, ["rebuild", *argv, "--json"], out) == 0
    return json.loads(out.getvalue()), capsys.readouterr().err


async def test_rebuild_publishes_the_figures_of_the_log(
    kafka_bootstrap: str,
    mongodb_uri: str,
    journey: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = uuid.uuid4().hex[:8]
    channel, database = f"rebuild-{run}", f"t_analytics_rebuild_{run}"
    base = datetime.now(UTC) - timedelta(hours=3)
    for i in range(3):
        lead = f"lead-{run}-{i}"
        await produce_envelope(kafka_bootstrap, LEADS_EVENTS, journey.captured(lead, channel, base=base))
    qualified = journey.qualified(f"lead-{run}-0", channel, when=60, base=base)
    await produce_envelope(kafka_bootstrap, LEAD_QUALIFIED, qualified)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("MONGODB_URI", mongodb_uri)
    monkeypatch.setenv("MONGODB_DATABASE", database)
    client = connect(mongodb_uri, "analytics-rebuild-test")
    snapshots = MongoSnapshots(client[database])
    stale = Snapshot.of(Figures(), worker="crm-analytics", at=datetime.now(UTC) - timedelta(hours=1))
    await snapshots.save(stale)
    try:
        dry, err = await _rebuild(monkeypatch, capsys, "--dry-run")
        assert "replaying the log" in err
        assert dry["scanned_events"] >= 4
        assert dry["channels"][channel]["captured"] == 3
        assert dry["channels"][channel]["qualified"] == 1
        assert dry["funnel"]["funnel:captured"]["was"] == 0
        assert dry["funnel"]["funnel:captured"]["now"] >= 3
        latest = await snapshots.latest()
        assert latest is not None
        assert latest.worker == "crm-analytics", "a dry run publishes nothing"

        done, _ = await _rebuild(monkeypatch, capsys)
        assert done["published"] is True
        assert done["replaced_snapshot"]["worker"] == "crm-analytics"
        latest = await snapshots.latest()
        assert latest is not None
        assert latest.worker == cli.REBUILD_WORKER
        assert latest.channels[channel]["captured"] == 3

        # The API serves the rebuilt figures.
        app = create_app(AnalyticsSettings())
        async with running_app(app) as http:
            answer = await http.get("/channels", headers=auth_headers(["analyst"]))
        assert answer.status_code == 200, answer.text
        assert channel in json.dumps(answer.json())
    finally:
        await client.drop_database(database)
        await client.close()
