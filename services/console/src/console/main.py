"""Entry point: ``python -m console.main`` or ``crm-console``."""

from __future__ import annotations

from crm_platform.app import serve
from fastapi import FastAPI

from console.bootstrap import build_app
from console.settings import ConsoleSettings


def create_app(settings: ConsoleSettings | None = None) -> FastAPI:
    return build_app(settings or ConsoleSettings())


def run() -> None:
    settings = ConsoleSettings()
    serve(create_app(settings), settings)


if __name__ == "__main__":
    run()
