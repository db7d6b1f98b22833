"""/forecast: pipeline value per stage and the weighted forecast, own book or team."""

from __future__ import annotations

from typing import Annotated

from crm_platform.routes import CurrentActor, DbDep
from fastapi import APIRouter, Query

from sales import store as repo
from sales.api.deps import forecast_readers
from sales.api.models import ForecastOut
from sales.domain.access import forecast_scope
from sales.domain.forecast import forecast

router = APIRouter(tags=["forecast"], dependencies=[forecast_readers])


@router.get(
    "/forecast",
    response_model=ForecastOut,
    summary="Value per stage and weighted forecast: a rep's own book; managers, admins "
    "and analysts the team (or one rep with ?owner=)",
)
async def get_forecast(
    db: DbDep,
    actor: CurrentActor,
    owner: Annotated[str | None, Query(max_length=100)] = None,
) -> ForecastOut:
    scoped = forecast_scope(actor, owner)
    pipeline = await repo.get_pipeline(db)
    totals, currencies = await repo.stage_totals(db, scoped)
    return ForecastOut.of(
        forecast(pipeline, totals),
        scope="team" if scoped is None else "own" if scoped == actor.user_id else "rep",
        owner=scoped,
        pipeline_version=pipeline.version,
        currencies=currencies,
    )
