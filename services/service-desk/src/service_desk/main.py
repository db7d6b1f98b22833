"""Entry point: ``python -m service_desk.main`` (or the ``crm-service-desk`` script)."""

from __future__ import annotations

from crm_platform.app import serve
from crm_platform.clock import Clock
from crm_platform.settings import ServiceSettings
from fastapi import FastAPI

from service_desk.bootstrap import bootstrap
from service_desk.settings import ServiceDeskSettings


def create_app(settings: ServiceSettings | None = None, *, clock: Clock | None = None) -> FastAPI:
    return bootstrap(settings or ServiceDeskSettings(), clock=clock)


def run() -> None:
    settings = ServiceDeskSettings()
    serve(create_app(settings), settings)


if __name__ == "__main__":
    run()
