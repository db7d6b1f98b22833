"""The one place that wires settings, runtime, handlers and routers for the sales service."""

from __future__ import annotations

from typing import Any

from crm_platform.app import create_app
from crm_platform.runtime import ServiceRuntime
from crm_platform.settings import ServiceSettings
from fastapi import FastAPI
from pydantic import Field
from pymongo.asynchronous.database import AsyncDatabase

from sales import consumers, store
from sales.api import forecast as forecast_api
from sales.api import inbox as inbox_api
from sales.api import opportunities as opportunities_api
from sales.api import team as team_api
from sales.domain.inbox import DEFAULT_SLA_MINUTES, MAX_SLA_MINUTES, MIN_SLA_MINUTES

SERVICE_NAME = "sales"
DEFAULT_PORT = 8002


class SalesSettings(ServiceSettings):
    service_name: str = Field(default=SERVICE_NAME, validation_alias="CRM_SERVICE_NAME")
    http_port: int = Field(default=DEFAULT_PORT, validation_alias="CRM_HTTP_PORT", ge=1, le=65535)
    lead_response_sla_minutes: int = Field(
        default=DEFAULT_SLA_MINUTES,
        validation_alias="CRM_SALES_LEAD_RESPONSE_SLA_MINUTES",
        ge=MIN_SLA_MINUTES,
        le=MAX_SLA_MINUTES,
        description="The SLA stored on first start; afterwards PUT /config changes it",
    )


def build_runtime(settings: ServiceSettings) -> ServiceRuntime:
    sla = getattr(settings, "lead_response_sla_minutes", DEFAULT_SLA_MINUTES)

    async def indexes(db: AsyncDatabase[dict[str, Any]]) -> None:
        await store.ensure_indexes(db, default_sla_minutes=sla)

    return ServiceRuntime(settings, subscription=consumers.subscription(), indexes=indexes)


def build_app(settings: ServiceSettings) -> FastAPI:
    return create_app(
        settings=settings,
        title="CRM sales",
        description=(
            "Sales' department service: the inbox of qualified leads handed over by marketing "
            "(round-robin assignment, response SLA, verdicts back to marketing), the pipeline with "
            "required fields per stage, opportunities and their activities, the weighted forecast, "
            "and won deals handed to customer success with the commitments sales made."
        ),
        runtime=build_runtime(settings),
        protected=[inbox_api.router, opportunities_api.router, forecast_api.router, team_api.router],
    )
