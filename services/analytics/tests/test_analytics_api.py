"""The read API over the snapshot: shapes, roles, readiness, /metrics gauges."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from analytics.domain.engine import AnalyticsState, apply
from analytics.domain.figures import HANDOFF_NAMES
from analytics.domain.kpis import Json
from analytics.domain.snapshot import KpiReport, Snapshot
from analytics.main import create_app
from analytics.store import MongoKpis, MongoSnapshots
from crm_contracts import decode
from crm_platform.mongo import connect
from crm_platform.settings import ServiceSettings
from crm_platform.testing import auth_headers, running_app

pytestmark = pytest.mark.integration

ANALYST = auth_headers(["analyst"], "ann")


def figures_of(journey):
    state = AnalyticsState()
    for env in [
        journey.captured("lead-1", "web", when=0),
        journey.qualified("lead-1", "web", when=60),
        journey.verdict("lead-1", when=360),
        journey.won("deal-1", "lead-1", when=3600),
        journey.captured("lead-2", "partner.eu", when=0),  # a dot in a channel name
        journey.receipt("lead-qualified", "evt-1", 0.004),
        journey.receipt("deal-won", "evt-2", 0.02),
    ]:
        apply(state, env, decode(env))
    return state.figures


async def write(settings, figures, when=datetime(2025, 5, 1, 12, 0, tzinfo=UTC)):
    client = connect(settings.mongodb_uri, "analytics-test")
    try:
        await MongoSnapshots(client[settings.database_name]).save(
            Snapshot.of(figures, worker="test", at=when)
        )
    finally:
        await client.close()


async def test_before_any_snapshot_the_figures_are_zero(make_settings):
    async with running_app(create_app(make_settings("analytics"))) as client:
        funnel = (await client.get("/funnel", headers=ANALYST)).json()
        assert funnel["stages"] == dict.fromkeys(["captured", "qualified", "accepted", "won", "onboarded"], 0)
        assert funnel["updated_at"] is None
        assert all(v is None for v in funnel["conversion"].values())
        assert (await client.get("/channels", headers=ANALYST)).json() == {}
        handoffs = (await client.get("/handoffs", headers=ANALYST)).json()
        assert handoffs["lead-qualified"]["transport"] == {"count": 0, "p50": None, "p95": None, "p99": None}


async def test_snapshot_served_as_funnel_channels_handoffs_and_summary(make_settings, journey):
    settings = make_settings("analytics")
    await write(settings, figures_of(journey))
    async with running_app(create_app(settings)) as client:
        funnel = (await client.get("/funnel", headers=ANALYST)).json()
        assert funnel["stages"] == {"captured": 2, "qualified": 1, "accepted": 1, "won": 1, "onboarded": 0}
        assert funnel["conversion"]["captured_to_qualified"] == 0.5
        assert funnel["conversion"]["won_to_onboarded"] == 0.0
        assert funnel["updated_at"].startswith("2025-05-01T12:00:00")

        channels = (await client.get("/channels", headers=ANALYST)).json()
        assert channels["web"] == {"captured": 1, "qualified": 1, "accepted": 1, "won": 1, "onboarded": 0}
        assert channels["partner.eu"]["captured"] == 1

        handoffs = (await client.get("/handoffs", headers=ANALYST)).json()
        # Every handoff of the contracts' table, the action items' too, and the five of the brief among them.
        assert list(handoffs) == list(HANDOFF_NAMES)
        brief = {"lead-qualified", "lead-verdict", "deal-won", "upsell-spotted", "commitment-flagged"}
        assert brief < set(handoffs)
        lq = handoffs["lead-qualified"]
        assert lq["transport"]["count"] == 1
        assert lq["transport"]["p50"] == pytest.approx(0.004, rel=0.02)
        assert lq["business"]["count"] == 1
        assert lq["business"]["p95"] == pytest.approx(300, rel=0.02)
        assert handoffs["deal-won"]["business"]["count"] == 0
        assert handoffs["lead-verdict"]["business"] is None

        summary = (await client.get("/summary", headers=ANALYST)).json()
        assert summary["funnel"] == funnel
        assert summary["channels"] == channels
        assert summary["handoffs"] == handoffs
        assert summary["updated_at"] == funnel["updated_at"]


async def test_handoff_latency_over_time_per_day_within_the_window(make_settings, journey):
    """Transport per day from the snapshot, business per day from the KPI report, each stored and
    read back; the window keeps the last ``days`` days."""
    today = datetime.now(UTC).replace(hour=9, minute=0, second=0, microsecond=0)
    state = AnalyticsState()
    for env in [
        journey.receipt("lead-qualified", "evt-1", 0.004, base=today - timedelta(days=10)),
        journey.receipt("lead-qualified", "evt-2", 0.008, base=today - timedelta(days=2)),
        journey.receipt("lead-qualified", "evt-3", 0.016, base=today - timedelta(days=2), when=60),
    ]:
        apply(state, env, decode(env))
    settings = make_settings("analytics")
    await write(settings, state.figures, when=today)
    day: dict[str, Json] = {"count": 2, "p50": 600.0, "p90": 900.0}
    daily: list[Json] = [{**day, "day": (today - timedelta(days=n)).date().isoformat()} for n in (40, 1)]
    business: Json = {"windows": {}, "pending": 0, "oldest_pending_seconds": None, "daily": daily}
    mongo = connect(settings.mongodb_uri, "analytics-test")
    try:
        report = KpiReport(at=today, kpis={"business_latency": {"deal-won": business}}, worker="test")
        await MongoKpis(mongo[settings.database_name]).save(report)
    finally:
        await mongo.close()
    async with running_app(create_app(settings)) as client:
        r = await client.get("/handoffs/series", params={"days": 7}, headers=ANALYST)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["days"] == 7
        assert list(body["handoffs"]) == list(HANDOFF_NAMES)
        lq = body["handoffs"]["lead-qualified"]
        assert [(d["day"], d["count"]) for d in lq["transport"]] == [
            ((today - timedelta(days=2)).date().isoformat(), 2)
        ]
        assert lq["transport"][0]["p90"] == pytest.approx(0.016, rel=0.02)
        assert lq["business"] is None  # not in this KPI report
        won = body["handoffs"]["deal-won"]
        assert won["transport"] == []
        assert won["business"] == [{**day, "day": (today - timedelta(days=1)).date().isoformat()}]
        wider = (await client.get("/handoffs/series", params={"days": 60}, headers=ANALYST)).json()
        assert [d["count"] for d in wider["handoffs"]["lead-qualified"]["transport"]] == [1, 2]
        assert len(wider["handoffs"]["deal-won"]["business"]) == 2
        for days in ("0", "91", "x"):
            r = await client.get("/handoffs/series", params={"days": days}, headers=ANALYST)
            assert r.status_code == 422, days


async def test_only_analysts_admins_and_sales_managers_may_read(make_settings):
    async with running_app(create_app(make_settings("analytics"))) as client:
        assert (await client.get("/summary")).status_code == 401
        denied = await client.get("/funnel", headers=auth_headers(["sales_rep"]))
        assert denied.status_code == 403
        assert denied.json()["error"] == "forbidden"
        for role in ("analyst", "admin", "sales_manager", "executive"):
            for path in ("/funnel", "/channels", "/handoffs", "/summary", "/handoffs/series"):
                response = await client.get(path, headers=auth_headers([role]))
                assert response.status_code == 200, (role, path)


async def test_metrics_export_the_latest_snapshot(make_settings, journey):
    settings = make_settings("analytics")
    async with running_app(create_app(settings)) as client:
        await write(settings, figures_of(journey))  # written after start: read on scrape
        text = (await client.get("/metrics")).text
        assert 'crm_analytics_funnel{stage="captured"} 2.0' in text
        assert 'crm_analytics_channel_funnel{channel="web",stage="won"} 1.0' in text
        for quantile in ("0.5", "0.95", "0.99"):
            pattern = (
                r'crm_analytics_handoff_latency_seconds\{handoff="lead-qualified",'
                rf'kind="business",quantile="{re.escape(quantile)}"\}} (\S+)'
            )
            match = re.search(pattern, text)
            assert match, quantile
            assert float(match.group(1)) == pytest.approx(300, rel=0.02)
        assert 'crm_analytics_handoff_latency_samples{handoff="deal-won",kind="transport"} 1.0' in text
        assert "crm_analytics_snapshot_timestamp_seconds" in text


async def test_readyz_checks_mongodb(make_settings):
    async with running_app(create_app(make_settings("analytics"))) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"mongodb": "ok"}


async def test_mongodb_down_means_not_ready_and_503_not_500():
    settings = ServiceSettings.model_validate(
        {
            "CRM_SERVICE_NAME": "analytics",
            "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
            "MONGODB_URI": "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=300",
        }
    )
    async with running_app(create_app(settings)) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["mongodb"].startswith("unreachable")
        response = await client.get("/funnel", headers=ANALYST)
        assert response.status_code == 503
        # The permission policy was never loaded (the database was down from the start), so the
        # route cannot know who may call it: it refuses before reading the snapshot, with a
        # 503 too (never the defaults, which could grant what an admin revoked).
        assert response.json()["error"] == "database_unavailable"
        assert (await client.get("/metrics")).status_code == 200  # last figures, if any
