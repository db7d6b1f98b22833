"""GET /funnel, /channels, /handoffs, /summary: the latest snapshot, for analysts and managers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from crm_platform.auth import Role, require_roles
from crm_platform.errors import DomainError
from fastapi import APIRouter, Query, Request

from analytics.api.models import ChannelsOut, FunnelOut, HandoffSeries, HandoffsOut, SeriesOut, SummaryOut
from analytics.domain.figures import BUSINESS, BUSINESS_HANDOFFS, HANDOFF_NAMES, SERIES_DAYS, TRANSPORT
from analytics.domain.snapshot import Snapshot
from analytics.metrics import SnapshotCache

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
    """Every handoff, each with its days in the window that had a sample (oldest first); a
    transport sample's day is when the receiver stored it, a business one's when its step ended."""
    snapshot = await _snapshot(request)
    since = (datetime.now(UTC) - timedelta(days=days - 1)).date().isoformat()
    names = list(HANDOFF_NAMES) + sorted(set(snapshot.series) - set(HANDOFF_NAMES))
    handoffs: dict[str, HandoffSeries] = {}
    for name in names:
        kinds = snapshot.series.get(name, {})
        transport = [d for d in kinds.get(TRANSPORT, []) if d["day"] >= since]
        business = [d for d in kinds.get(BUSINESS, []) if d["day"] >= since]
        handoffs[name] = HandoffSeries.model_validate(
            {"transport": transport, "business": business if name in BUSINESS_HANDOFFS else None}
        )
    return SeriesOut(days=days, handoffs=handoffs, updated_at=snapshot.updated_at)


@router.get("/summary", response_model=SummaryOut, summary="Funnel, channels and handoffs")
async def summary(request: Request) -> SummaryOut:
    snapshot = await _snapshot(request)
    return SummaryOut(
        funnel=_funnel(snapshot),
        channels=ChannelsOut.model_validate(snapshot.channels).root,
        handoffs=HandoffsOut.model_validate(snapshot.handoffs).root,
        updated_at=snapshot.updated_at,
    )
