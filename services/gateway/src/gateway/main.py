"""Entry point: ``python -m gateway.main`` or ``crm-gateway``.

The settings are read before the app's modules are imported: a configuration production
refuses (no keys, no admin password) stops the process after about a third of the CPU of
importing the app (FastAPI, the routes, the stores: about 3 s of CPU, which took more than
a minute of wall time on a node at load 30; README, "Tests").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.settings import GatewaySettings

if TYPE_CHECKING:
    from fastapi import FastAPI


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    from gateway.bootstrap import build_app

    return build_app(settings or GatewaySettings())


def run() -> None:
    settings = GatewaySettings()  # refused here, before the app is imported
    from crm_platform.app import serve

    serve(create_app(settings), settings)


if __name__ == "__main__":
    run()
