"""Entry point: ``python -m gateway.main`` or ``crm-gateway``."""

from __future__ import annotations

from crm_platform.app import serve
from fastapi import FastAPI

from gateway.bootstrap import build_app
from gateway.settings import GatewaySettings


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    return build_app(settings or GatewaySettings())


def run() -> None:
    settings = GatewaySettings()
    serve(create_app(settings), settings)


if __name__ == "__main__":
    run()
