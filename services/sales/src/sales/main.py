"""Entry point: ``python -m sales.main`` (or ``crm-sales``) serves the sales API on port 8002."""

from __future__ import annotations

from crm_platform.app import serve
from crm_platform.settings import ServiceSettings
from fastapi import FastAPI

from sales.bootstrap import build_app
from sales.settings import SalesSettings


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    return build_app(settings if settings is not None else SalesSettings())


def run() -> None:
    settings = SalesSettings()
    serve(create_app(settings), settings)


if __name__ == "__main__":
    run()
