"""Entry point: ``python -m analytics.main`` (or ``crm-analytics``) serves the analytics read API
on port 8004. The stream worker has its own: ``python -m analytics.worker``."""

from __future__ import annotations

from crm_platform.app import serve
from crm_platform.settings import ServiceSettings
from fastapi import FastAPI

from analytics.bootstrap import AnalyticsSettings, build_app


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    return build_app(settings if settings is not None else AnalyticsSettings())


def run() -> None:
    settings = AnalyticsSettings()
    serve(create_app(settings), settings)


if __name__ == "__main__":
    run()
