"""The one place that wires the console: settings, the gateway client, routers, assets."""

from __future__ import annotations

from pathlib import Path

import httpx
from crm_platform.app import create_app
from fastapi import APIRouter, FastAPI
from fastapi.staticfiles import StaticFiles

from console.api import (
    action_items,
    admin,
    audit,
    auth,
    customer,
    kpis,
    marketing,
    reports,
    retention,
    sales,
    service,
    stages,
    success,
)
from console.api_client import Gateway
from console.session import Sealer
from console.settings import ConsoleSettings
from console.web import install

STATIC = Path(__file__).parent / "static"
ROUTERS: tuple[APIRouter, ...] = (
    auth.router,
    marketing.router,
    sales.router,
    stages.router,
    service.router,
    success.router,
    retention.router,
    action_items.router,
    reports.router,
    kpis.router,
    admin.router,
    audit.router,
    customer.router,
)


def build_app(settings: ConsoleSettings, transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    """``transport`` replaces the network to the gateway (tests with a fake gateway)."""
    gateway = Gateway(settings.gateway_url, settings.gateway_timeout_seconds, transport=transport)

    async def on_startup(_: FastAPI) -> None:
        return None

    # The platform's app: /healthz, /readyz, /metrics, request ids, JSON logs, body limit.
    # Pages authenticate by the session cookie (web.page), not by a bearer token.
    app = create_app(
        settings=settings,
        title="CRM console",
        description="Server-rendered pages over the gateway's public API.",
        runtime=None,
        public=list(ROUTERS),
        on_startup=on_startup,
        idempotent_paths=lambda _: False,
    )
    app.state.gateway = gateway
    app.state.sealer = Sealer(settings.session_key())
    app.router.on_shutdown.append(gateway.aclose)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    install(app)
    return app
