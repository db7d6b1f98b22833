"""Entry point: ``python -m service_desk.main`` (or ``crm-service-desk``) serves the desk on port 8003."""

from __future__ import annotations

from crm_platform.app import serve
from crm_platform.clock import Clock, system_clock
from crm_platform.settings import ServiceSettings
from fastapi import FastAPI

from service_desk.bootstrap import build_app
from service_desk.settings import ServiceDeskSettings


def create_app(settings: ServiceSettings | None = None, *, clock: Clock | None = None) -> FastAPI:
    return build_app(settings if settings is not None else ServiceDeskSettings(), clock=clock or system_clock)


def run() -> None:
    settings = ServiceDeskSettings()
    serve(create_app(settings), settings)


if __name__ == "__main__":
    run()
