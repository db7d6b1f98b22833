"""GET /kpis, /kpis/service, /kpis/marketing: the KPIs the worker computed last, per audience.

- ``/kpis``: every KPI (analysts, executives, admins). Nothing in it names a person: teams are
  the accounts' tiers, departments are departments, channels and campaigns are marketing's.
- ``/kpis/service``: customer service and success (reps, CSMs, their team lead): tickets, CSAT,
  NPS, renewals and retention, check-in coverage, their own action-item queue and the business
  latency of the handoffs they receive.
- ``/kpis/marketing``: marketing and its manager: leads per channel and campaign with sales'
  verdict reasons, their action-item queue and the handoffs marketing receives.

``?period=week|month|quarter`` (default ``month``) picks the period kind, ``?team=`` one team
(``all`` is always there); a value outside those is a 422 naming the field.
"""

from __future__ import annotations

from typing import Annotated, Literal

from crm_contracts import utcnow
from crm_platform.auth import SERVICE_ROLES, Role, require_roles
from fastapi import APIRouter, Query, Request

from analytics import handlers
from analytics.api.models import KpisOut, MarketingKpisOut, ServiceKpisOut
from analytics.api.routes import SnapshotUnavailable
from analytics.domain.kpis import Json
from analytics.domain.snapshot import KpiReport
from analytics.repository import KpiRepository

EVERY_KPI = (Role.ANALYST, Role.EXECUTIVE, Role.ADMIN)
SERVICE_AUDIENCE = (*sorted(SERVICE_ROLES - {Role.ADMIN}), *EVERY_KPI)
MARKETING_AUDIENCE = (Role.MARKETING, Role.MARKETING_MANAGER, *EVERY_KPI)
# The handoffs each department receives (the business latency of its own first steps).
RECEIVED_BY = {
    "customer-success": (
        "deal-won",
        "commitment-review-requested",
        "action-item-outcome-from-marketing",
        "action-item-outcome-from-sales",
        "commitment-flag-outcome",
    ),
    "marketing": ("lead-verdict", "action-item-to-marketing"),
}

router = APIRouter(
    tags=["kpis"], dependencies=[require_roles(*sorted({*SERVICE_AUDIENCE, *MARKETING_AUDIENCE}))]
)

PeriodKind = Annotated[Literal["week", "month", "quarter"], Query(description="The period kind")]
Team = Annotated[str | None, Query(max_length=100, description="One team (an account tier) besides 'all'")]


async def _report(request: Request) -> KpiReport:
    reports: KpiRepository = request.app.state.kpi_reports
    try:
        return await handlers.latest_kpis(reports, utcnow())
    except Exception as exc:
        raise SnapshotUnavailable(
            "the analytics KPI store is unreachable; retry shortly", cause=type(exc).__name__
        ) from exc


def _periods(report: KpiReport, kind: str, team: str | None) -> list[Json]:
    periods = report.kpis.get("periods")
    rows = periods.get(kind, []) if isinstance(periods, dict) else []
    out: list[Json] = []
    for row in rows if isinstance(rows, list) else []:
        if isinstance(row, dict) and isinstance(teams := row.get("teams"), dict):
            keep = {"all", team} if team else set(teams)
            out.append({**row, "teams": {name: figures for name, figures in teams.items() if name in keep}})
    return out


def _part(report: KpiReport, name: str) -> dict[str, Json]:
    value = report.kpis.get(name)
    return value if isinstance(value, dict) else {}


def _computed_at(report: KpiReport) -> str | None:
    return report.at.isoformat() if report.worker else None


@router.get(
    "/kpis",
    response_model=KpisOut,
    summary="Every KPI per period and team, open items, business latency, marketing figures",
    dependencies=[require_roles(*EVERY_KPI)],
)
async def every_kpi(request: Request, period: PeriodKind = "month", team: Team = None) -> KpisOut:
    report = await _report(request)
    return KpisOut.model_validate(
        {
            "computed_at": _computed_at(report),
            "period_kind": period,
            "periods": _periods(report, period, team),
            "action_items": _part(report, "action_items"),
            "business_latency": _part(report, "business_latency"),
            "marketing": _part(report, "marketing"),
            "custom_fields": _part(report, "custom_fields"),
        }
    )


@router.get(
    "/kpis/service",
    response_model=ServiceKpisOut,
    summary="Customer service and success KPIs per period and team",
    dependencies=[require_roles(*SERVICE_AUDIENCE)],
)
async def service_kpis(request: Request, period: PeriodKind = "month", team: Team = None) -> ServiceKpisOut:
    report = await _report(request)
    latency = _part(report, "business_latency")
    return ServiceKpisOut.model_validate(
        {
            "computed_at": _computed_at(report),
            "period_kind": period,
            "periods": _periods(report, period, team),
            "action_items": _part(report, "action_items").get("customer-success"),
            "business_latency": {h: latency[h] for h in RECEIVED_BY["customer-success"] if h in latency},
        }
    )


@router.get(
    "/kpis/marketing",
    response_model=MarketingKpisOut,
    summary="Leads per channel and campaign with sales' verdict reasons; marketing's queue",
    dependencies=[require_roles(*MARKETING_AUDIENCE)],
)
async def marketing_kpis(request: Request) -> MarketingKpisOut:
    report = await _report(request)
    latency = _part(report, "business_latency")
    return MarketingKpisOut.model_validate(
        {
            "computed_at": _computed_at(report),
            "marketing": _part(report, "marketing"),
            "action_items": _part(report, "action_items").get("marketing"),
            "business_latency": {h: latency[h] for h in RECEIVED_BY["marketing"] if h in latency},
        }
    )
