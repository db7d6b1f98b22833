"""The KPI routes over the worker's latest KPI report: shapes, audiences, bad input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from analytics.domain.engine import AnalyticsState, apply
from analytics.domain.kpis import compute
from analytics.domain.snapshot import KpiReport
from analytics.main import create_app
from analytics.store import MongoKpis
from crm_contracts import decode, envelope_for
from crm_contracts.events.common import Consent
from crm_contracts.events.leads import LeadCapturedV1
from crm_contracts.events.sales import LeadVerdictV1, RejectReason, Verdict
from crm_contracts.events.service_desk import CheckInLoggedV1, Sentiment, SurveyAnsweredV1, SurveyKind
from crm_platform.mongo import connect
from crm_platform.testing import auth_headers, running_app

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)
EARLIER = NOW - timedelta(minutes=5)


def _records() -> dict:
    state = AnalyticsState()
    events = [
        envelope_for(
            CheckInLoggedV1(
                checkin_id="ci-1",
                account_id="acc-1",
                tier="strategic",
                csm="csm-1",
                held_at=EARLIER,
                sentiment=Sentiment.POSITIVE,
                attendees=2,
            ),
            source="service-desk",
            correlation_id="c",
            occurred_at=EARLIER,
        ),
        envelope_for(
            SurveyAnsweredV1(
                survey_id="s-1",
                account_id="acc-1",
                kind=SurveyKind.NPS,
                score=3,
                sent_at=EARLIER,
                answered_at=EARLIER,
            ),
            source="service-desk",
            correlation_id="c",
            occurred_at=EARLIER,
        ),
        envelope_for(
            LeadCapturedV1(
                lead_id="l-1",
                email="l1@example.com",
                name="Ada",
                company="Acme",
                source_channel="web",
                consent=Consent(marketing_email=True),
                merged=False,
            ),
            source="leads",
            correlation_id="c",
            occurred_at=EARLIER,
        ),
        envelope_for(
            LeadVerdictV1(
                lead_id="l-1", verdict=Verdict.REJECTED, reason_code=RejectReason.NO_NEED, decided_by="rep-1"
            ),
            source="sales",
            correlation_id="c",
            occurred_at=EARLIER,
        ),
    ]
    for env in events:
        apply(state, env, decode(env))
    return dict(state.records)


async def write(settings) -> None:
    client = connect(settings.mongodb_uri, "analytics-test")
    try:
        report = KpiReport(at=NOW, kpis=compute(_records(), NOW), records_version=4, worker="test")
        await MongoKpis(client[settings.database_name]).save(report)
    finally:
        await client.close()


async def test_before_the_worker_computed_any_the_kpis_are_empty(make_settings):
    async with running_app(create_app(make_settings("analytics"))) as client:
        body = (await client.get("/kpis", headers=auth_headers(["executive"]))).json()
        assert body["computed_at"] is None
        assert len(body["periods"]) == 12
        assert body["periods"][0]["teams"]["all"]["nps"]["responses"] == 0


async def test_every_kpi_for_executives_service_kpis_for_service_and_channels_for_marketing(make_settings):
    settings = make_settings("analytics")
    await write(settings)
    async with running_app(create_app(settings)) as client:
        every = await client.get("/kpis", params={"period": "week"}, headers=auth_headers(["executive"]))
        assert every.status_code == 200, every.text
        body = every.json()
        assert body["period_kind"] == "week"
        assert body["computed_at"] is not None
        this_week = body["periods"][0]["teams"]
        assert this_week["strategic"]["nps"] == {
            "responses": 1,
            "promoters": 0,
            "detractors": 1,
            "score": -100.0,
        }
        assert body["marketing"]["channels"]["web"]["verdict_reasons"] == {"no_need": 1}
        assert "csm-1" not in every.text
        assert "rep-1" not in every.text

        service = await client.get(
            "/kpis/service", params={"team": "strategic"}, headers=auth_headers(["service_lead"])
        )
        assert service.status_code == 200, service.text
        teams = service.json()["periods"][0]["teams"]
        assert set(teams) == {"all", "strategic"}
        assert set(service.json()["business_latency"]) == {  # the handoffs customer success receives
            "deal-won",
            "commitment-review-requested",
            "action-item-outcome-from-marketing",
            "action-item-outcome-from-sales",
            "commitment-flag-outcome",
        }

        marketing = await client.get("/kpis/marketing", headers=auth_headers(["marketing"]))
        assert marketing.status_code == 200, marketing.text
        assert marketing.json()["marketing"]["channels"]["web"]["rejected"] == 1
        assert set(marketing.json()["business_latency"]) == {"lead-verdict", "action-item-to-marketing"}


async def test_each_kpi_route_refuses_the_roles_outside_its_audience(make_settings):
    async with running_app(create_app(make_settings("analytics"))) as client:
        assert (await client.get("/kpis")).status_code == 401
        cases = {
            "/kpis": (("analyst", "executive", "admin"), ("marketing", "service_lead", "sales_manager")),
            "/kpis/service": (
                ("service_rep", "customer_success_manager", "service_lead", "executive"),
                ("marketing", "sales_rep"),
            ),
            "/kpis/marketing": (
                ("marketing", "marketing_manager", "analyst"),
                ("service_rep", "sales_manager"),
            ),
        }
        for path, (allowed, refused) in cases.items():
            for role in allowed:
                assert (await client.get(path, headers=auth_headers([role]))).status_code == 200, (path, role)
            for role in refused:
                assert (await client.get(path, headers=auth_headers([role]))).status_code == 403, (path, role)


async def test_an_unknown_period_is_a_422_naming_the_field(make_settings):
    async with running_app(create_app(make_settings("analytics"))) as client:
        response = await client.get("/kpis", params={"period": "decade"}, headers=auth_headers(["analyst"]))
        assert response.status_code == 422
        assert "period" in response.text
