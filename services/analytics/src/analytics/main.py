"""The analytics read API: ``python -m analytics.main`` (port 8004 by default)."""

from __future__ import annotations

from crm_platform.app import create_app as platform_app
from crm_platform.app import serve
from crm_platform.settings import ServiceSettings
from fastapi import FastAPI

from analytics import bootstrap

DESCRIPTION = (
    "Funnel, channel attribution and handoff latencies, computed by the analytics "
    "stream worker from every department's events and read from its latest snapshot."
)


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    s = bootstrap.analytics_settings(settings)
    runtime = bootstrap.build_runtime(s)
    app = platform_app(
        settings=s,
        title="CRM analytics",
        description=DESCRIPTION,
        runtime=runtime,
        protected=bootstrap.routers(),
    )
    bootstrap.install_snapshot_cache(app, runtime)
    return app


def run() -> None:
    s = bootstrap.analytics_settings()
    serve(create_app(s), s)


if __name__ == "__main__":
    run()
