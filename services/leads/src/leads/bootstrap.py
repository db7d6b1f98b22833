"""The one place that wires settings, runtime, handlers and routers for the leads service."""

from __future__ import annotations

from crm_platform.app import create_app
from crm_platform.runtime import ServiceRuntime
from crm_platform.settings import ServiceSettings
from fastapi import FastAPI
from pydantic import Field

from leads import consumers, store
from leads.api import leads as leads_api
from leads.api import scoring as scoring_api

SERVICE_NAME = "leads"
DEFAULT_PORT = 8001


class LeadsSettings(ServiceSettings):
    service_name: str = Field(default=SERVICE_NAME, validation_alias="CRM_SERVICE_NAME")
    http_port: int = Field(default=DEFAULT_PORT, validation_alias="CRM_HTTP_PORT", ge=1, le=65535)


def build_runtime(settings: ServiceSettings) -> ServiceRuntime:
    return ServiceRuntime(
        settings,
        subscription=consumers.subscription(),
        indexes=store.ensure_indexes,
    )


def build_app(settings: ServiceSettings) -> FastAPI:
    return create_app(
        settings=settings,
        title="CRM leads (marketing)",
        description=(
            "Marketing's department service: captures leads (merging duplicates by email), "
            "scores them from behaviour with versioned rules, hands qualified leads to sales "
            "(lead.qualified) and closes the loop with sales' verdict (lead.verdict)."
        ),
        runtime=build_runtime(settings),
        protected=[leads_api.router, scoring_api.router],
    )
