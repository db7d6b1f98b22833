"""The one place that wires settings, runtime, routers and metrics for the analytics read API.

The API process only reads: it neither consumes nor emits events (the faust worker,
``analytics.worker``, does the consuming), so its runtime owns just the MongoDB
client, and ``/readyz`` checks MongoDB only: a broker outage does not take the
read API out of rotation.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from crm_platform.app import create_app
from crm_platform.runtime import MongoOnlyRuntime
from crm_platform.settings import ServiceSettings
from fastapi import FastAPI, Request, Response

from analytics.api import kpis, routes
from analytics.metrics import COLLECTOR, SnapshotCache
from analytics.settings import AnalyticsSettings
from analytics.store import MongoKpis, MongoReconciliations, MongoSnapshots


def analytics_settings(settings: ServiceSettings | None = None) -> AnalyticsSettings:
    if settings is None:
        return AnalyticsSettings()  # from the environment
    if isinstance(settings, AnalyticsSettings):
        return settings
    return AnalyticsSettings(**settings.model_dump())


def build_runtime(settings: AnalyticsSettings) -> MongoOnlyRuntime:
    return MongoOnlyRuntime(settings)


def build_app(settings: ServiceSettings) -> FastAPI:
    s = analytics_settings(settings)
    runtime = build_runtime(s)
    app = create_app(
        settings=s,
        title="CRM analytics",
        description=(
            "Funnel, channel attribution, handoff latencies and the departments' KPIs, computed "
            "by the analytics stream worker from every department's events and read from its latest snapshot."
        ),
        runtime=runtime,
        protected=[routes.router, kpis.router],
    )
    install_snapshot_cache(app, runtime)
    return app


def install_snapshot_cache(app: FastAPI, runtime: MongoOnlyRuntime) -> SnapshotCache:
    """The figures cache behind the routes and ``/metrics`` (refreshed on each scrape)."""
    kpi_reports = MongoKpis(runtime.db)
    cache = SnapshotCache(
        MongoSnapshots(runtime.db), MongoReconciliations(runtime.db), kpi_reports=kpi_reports
    )
    app.state.snapshot_cache = cache
    app.state.kpi_reports = kpi_reports
    COLLECTOR.source = cache

    @app.middleware("http")
    async def _refresh_on_scrape(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if request.url.path == "/metrics":
            await cache.refresh_quietly()
        return await call_next(request)

    return cache
