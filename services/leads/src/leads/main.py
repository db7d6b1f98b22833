"""Entry point: ``python -m leads.main`` (or ``crm-leads``) serves the leads API on port 8001."""

from __future__ import annotations

from crm_platform.app import serve
from crm_platform.settings import ServiceSettings
from fastapi import FastAPI

from leads.bootstrap import LeadsSettings, build_app


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    return build_app(settings if settings is not None else LeadsSettings())


def run() -> None:
    settings = LeadsSettings()
    serve(create_app(settings), settings)


if __name__ == "__main__":
    run()
