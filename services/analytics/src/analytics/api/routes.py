"""GET /funnel, /channels, /handoffs, /summary: the latest snapshot, for analysts and managers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from crm_contracts import utcnow
from crm_platform.auth import Role, require_roles
from crm_platform.errors import DomainError
from fastapi import APIRouter, Query, Request

from analytics import handlers
from analytics.api.models import ChannelsOut, FunnelOut, HandoffSeries, HandoffsOut, SeriesOut, SummaryOut
from analytics.domain.figures import HANDOFF_NAMES, SERIES_DAYS, TRANSPORT
from analytics.domain.snapshot import Snapshot
from analytics.metrics import SnapshotCache
from analytics.repository import KpiRepository

READERS = (Role.ANALYST, Role.ADMIN, Role.SALES_MANAGER, Role.EXECUTIVE)

router = APIRouter(tags=["analytics"], dependencies=[require_roles(*READERS)])


class SnapshotUnavailable(DomainError):
    status_code = 503
    code = "snapshot_unavailable"


async def _snapshot(request: Request) -> Snapshot:
    cache: SnapshotCache = request.app.state.snapshot_cache
    try:
        return await cache.refresh()
    except Exception as exc:
        raise SnapshotUnavailable(
            "the analytics snapshot store is unreachable; retry shortly",
            cause=type(exc).__name__,
        ) from exc


def _funnel(snapshot: Snapshot) -> FunnelOut:
    return FunnelOut.model_validate({**snapshot.funnel, "updated_at": snapshot.updated_at})


@router.get("/funnel", response_model=FunnelOut, summary="Distinct leads/deals per funnel stage")
async def funnel(request: Request) -> FunnelOut:
    return _funnel(await _snapshot(request))


@router.get("/channels", response_model=ChannelsOut, summary="Funnel stage counts per channel")
async def channels(request: Request) -> ChannelsOut:
    return ChannelsOut.model_validate((await _snapshot(request)).channels)


@router.get(
    "/handoffs", response_model=HandoffsOut, summary="Transport and business latency percentiles per handoff"
)
async def handoffs(request: Request) -> HandoffsOut:
    return HandoffsOut.model_validate((await _snapshot(request)).handoffs)


@router.get(
    "/handoffs/series",
    response_model=SeriesOut,
    summary="Handoff latency over time: per handoff and UTC day, transport and business p50/p90",
)
async def handoff_series(
    request: Request,
    days: Annotated[int, Query(ge=1, le=SERIES_DAYS, description="The last days, up to today")] = 30,
) -> SeriesOut:
    """Every handoff, each with its days in the window that had a sample (oldest first):
    transport by the day the receiver stored the event (the snapshot's series), business by the
    day the receiver took its first human step (the KPIs' ``business_latency.daily``, for the
    handoffs whose step analytics can see; null for the others)."""
    snapshot = await _snapshot(request)
    daily = await _business_daily(request)
    since = (datetime.now(UTC) - timedelta(days=days - 1)).date().isoformat()
    names = list(HANDOFF_NAMES) + sorted((set(snapshot.series) | set(daily)) - set(HANDOFF_NAMES))
    handoffs: dict[str, HandoffSeries] = {}
    for name in names:
        transport = [d for d in snapshot.series.get(name, {}).get(TRANSPORT, []) if d["day"] >= since]
        business = [d for d in daily[name] if str(d.get("day")) >= since] if name in daily else None
        handoffs[name] = HandoffSeries.model_validate({"transport": transport, "business": business})
    return SeriesOut(days=days, handoffs=handoffs, updated_at=snapshot.updated_at)


async def _business_daily(request: Request) -> dict[str, list[dict[str, Any]]]:
    """Per handoff, the KPI report's business latency per day."""
    reports: KpiRepository = request.app.state.kpi_reports
    try:
        report = await handlers.latest_kpis(reports, utcnow())
    except Exception as exc:
        raise SnapshotUnavailable(
            "the analytics KPI store is unreachable; retry shortly", cause=type(exc).__name__
        ) from exc
    latency = report.kpis.get("business_latency")
    out: dict[str, list[dict[str, Any]]] = {}
    for name, figures in latency.items() if isinstance(latency, dict) else []:
        days = figures.get("daily") if isinstance(figures, dict) else None
        out[name] = [d for d in days if isinstance(d, dict)] if isinstance(days, list) else []
    return out


@router.get("/summary", response_model=SummaryOut, summary="Funnel, channels and handoffs")
async def summary(request: Request) -> SummaryOut:
    snapshot = await _snapshot(request)
    return SummaryOut(
        funnel=_funnel(snapshot),
        channels=ChannelsOut.model_validate(snapshot.channels).root,
        handoffs=HandoffsOut.model_validate(snapshot.handoffs).root,
        updated_at=snapshot.updated_at,
    )
