"""Upstream fields on the platform's one log line per request.

The platform's request middleware writes ``METHOD path -> status`` with the
duration. An outer ASGI middleware opens a per-request dict in a context
variable; the proxy adds ``upstream``, ``upstream_ms`` ... to it, and a filter on
the ``crm.http`` logger copies them onto that line, so each forwarded request
still logs exactly one line, now carrying its upstream and timings.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

_fields: ContextVar[dict[str, Any] | None] = ContextVar("gateway_log_fields", default=None)


def annotate(**fields: Any) -> None:
    current = _fields.get()
    if current is not None:
        current.update(fields)


class RequestLogFields:
    """ASGI middleware: one mutable field dict per HTTP request, visible to inner tasks."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = _fields.set({})
        try:
            await self.app(scope, receive, send)
        finally:
            _fields.reset(token)


class UpstreamFieldsFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        fields = _fields.get()
        if fields:
            for key, value in fields.items():
                if not hasattr(record, key):
                    setattr(record, key, value)
        return True


def install_log_filter() -> None:
    logger = logging.getLogger("crm.http")
    if not any(isinstance(f, UpstreamFieldsFilter) for f in logger.filters):
        logger.addFilter(UpstreamFieldsFilter())
