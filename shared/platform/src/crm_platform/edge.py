"""The HTTP edge every service shares: one pure ASGI middleware, outermost.

Per request it

* sets the request and correlation ids (``X-Request-ID`` / ``X-Correlation-ID``)
  for the whole request, *including* the answer to an unhandled error, so a 500
  names the id its body asks the user to quote (the ids used to be reset before
  Starlette's catch-all handler ran, which then printed ``null``);
* refuses bodies above ``CRM_MAX_REQUEST_BYTES`` with 413 before anything reads
  them: at once from ``Content-Length``, and while streaming for chunked bodies
  (the byte count is checked on every chunk the application pulls); the paths a
  service declares as uploads (``upload_paths``, streamed by their route) get
  ``CRM_MAX_UPLOAD_BYTES`` instead;
* gives the request's transactions their deadline (``CRM_DB_DEADLINE_SECONDS``,
  :mod:`crm_platform.deadline`; single operations get the same bound from the
  client's ``timeoutMS``, see :func:`crm_platform.mongo.connect`), and answers a
  database outage that escaped the app's handlers (e.g. in a middleware) with
  503 and ``Retry-After``, like the app factory's handler does for the routes;
* answers anything unhandled with a JSON 500 carrying the request id;
* counts the request in the HTTP metrics and writes one log line.

Being pure ASGI (no ``BaseHTTPMiddleware``) it runs in the request's own task,
so the context variables it sets are the ones handlers and error handlers see.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from crm_contracts import utcnow
from fastapi import HTTPException
from fastapi.encoders import jsonable_encoder
from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crm_platform import audit, metrics
from crm_platform.clock import DEMO_TIME_HEADER, parse_demo_time, simulated
from crm_platform.deadline import request_db_deadline
from crm_platform.errors import is_database_outage
from crm_platform.logging import correlation_id_var, request_id_var

log = logging.getLogger("crm.http")

QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# Label sets whose metric children an edge keeps (HttpEdge._series_of).
SERIES_KEPT = 1024
# A client-chosen id is echoed into logs and headers: keep it short and printable.
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")


class RequestTooLarge(HTTPException):
    """Raised while the application reads a body that grew past the limit.

    A FastAPI ``HTTPException`` on purpose: FastAPI re-raises those unchanged
    from its body parsing (any other exception there becomes a 400).
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes")
        self.limit = limit


# ``repr()`` of an enum member, as f-strings print them inside lists and tuples.
_ENUM_REPR = re.compile(r"<[A-Za-z_][\w.]*: ('[^']*'|\"[^\"]*\"|-?\d+)>")


def plain_enums(message: str) -> str:
    """``[<Role.ADMIN: 'admin'>]`` -> ``['admin']``: users see values, never Python reprs."""
    return _ENUM_REPR.sub(r"\1", message)


def error_response(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    """The platform's JSON error body: ``{"error", "message", ..., "request_id"}``.

    Every error answer goes through here, so this is also where enum reprs in a
    message become plain values.
    """
    body = {"error": code, "message": plain_enums(message), "request_id": request_id_var.get(), **extra}
    return JSONResponse(status_code=status, content=jsonable_encoder(body))


def new_request_id() -> str:
    """``uuid.uuid4().hex``: 16 random bytes with the version (4) and variant (RFC 4122) bits
    set as ``UUID(bytes=..., version=4)`` sets them, without making the UUID object (2.2 ->
    0.8 us; every request the gateway receives without an id makes one)."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40
    raw[8] = raw[8] & 0x3F | 0x80
    return raw.hex()


def _client_id(headers: Headers, name: str) -> str | None:
    value = headers.get(name)
    return value if value and _SAFE_ID.match(value) else None


def database_unavailable(retry_after_seconds: int) -> JSONResponse:
    response = error_response(
        503,
        "database_unavailable",
        "the service's database did not answer in time; retry later (with the same Idempotency-Key, "
        "a retry never repeats an effect that did happen)",
    )
    response.headers["Retry-After"] = str(retry_after_seconds)
    return response


@dataclass
class _Exchange:
    """What the edge learns about one request while it runs."""

    status: int = 500
    started: bool = False
    received: int = 0
    limit: int = 0
    ids: dict[str, str] = field(default_factory=dict)


class HttpEdge:
    def __init__(
        self,
        app: ASGIApp,
        *,
        service: str,
        max_body_bytes: int,
        db_deadline_seconds: float | None = None,
        retry_after_seconds: int = 5,
        upload_paths: Callable[[str], bool] | None = None,
        max_upload_bytes: int = 0,
    ) -> None:
        self.app = app
        self.upload_paths = upload_paths
        self.max_upload = max_upload_bytes
        self.deadline = db_deadline_seconds
        self.retry_after = retry_after_seconds
        self.service = service
        self.max_body = max_body_bytes
        # (method, route, status) -> the request counter's and the duration histogram's
        # children: ``labels()`` per request was two label checks, a lock and a dict lookup each.
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        rid = _client_id(headers, "x-request-id") or new_request_id()
        cid = _client_id(headers, "x-correlation-id") or rid
        r_token, c_token = request_id_var.set(rid), correlation_id_var.set(cid)
        # Nobody acts until the request's token is verified (crm_platform.auth names the actor).
        a_token, o_token = audit.actor_var.set(None), audit.operation_var.set(None)
        ex = _Exchange(ids={"x-request-id": rid, "x-correlation-id": cid})
        started = time.perf_counter()
        try:
            await self._handle(scope, receive, self._sender(send, ex), ex, headers)
        finally:
            self._observe(scope, ex, time.perf_counter() - started)
            request_id_var.reset(r_token)
            correlation_id_var.reset(c_token)
            audit.actor_var.reset(a_token)
            audit.operation_var.reset(o_token)

    async def _handle(
        self, scope: Scope, receive: Receive, send: Send, ex: _Exchange, headers: Headers
    ) -> None:
        declared = headers.get("content-length")
        if declared is not None and not declared.isdigit():
            await error_response(400, "bad_request", "invalid Content-Length header")(scope, receive, send)
            return
        upload = self.upload_paths is not None and self.upload_paths(scope.get("path", ""))
        ex.limit = self.max_upload if upload else self.max_body
        if declared is not None and int(declared) > ex.limit:
            message = f"request body larger than {ex.limit} bytes"
            await error_response(413, "payload_too_large", message, limit=ex.limit)(scope, receive, send)
            return
        try:
            deadline = request_db_deadline.set(self.deadline)
            try:
                await self.app(scope, self._limited(receive, ex), send)
            finally:
                request_db_deadline.reset(deadline)
        except RequestTooLarge as exc:
            if ex.started:
                raise
            await error_response(413, "payload_too_large", exc.detail, limit=exc.limit)(scope, receive, send)
        except Exception as exc:
            if ex.started:
                log.exception(
                    "error after the answer started on %s %s", scope.get("method"), scope.get("path")
                )
                raise
            await self._failure(exc, scope)(scope, receive, send)

    def _failure(self, exc: Exception, scope: Scope) -> JSONResponse:
        """Errors that escaped the app's handlers (raised by middleware): 503 or 500."""
        if is_database_outage(exc):
            log.warning("database unavailable on %s %s: %s", scope.get("method"), scope.get("path"), exc)
            return database_unavailable(self.retry_after)
        log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
        return error_response(500, "internal_error", "internal error; quote the request id to support")

    def _limited(self, receive: Receive, ex: _Exchange) -> Receive:
        async def limited() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                ex.received += len(message.get("body", b""))
                if ex.received > ex.limit:
                    raise RequestTooLarge(ex.limit)
            return message

        return limited

    @staticmethod
    def _sender(send: Send, ex: _Exchange) -> Send:
        async def sender(message: Message) -> None:
            if message["type"] == "http.response.start":
                ex.started = True
                ex.status = message["status"]
                out = MutableHeaders(scope=message)
                for name, value in ex.ids.items():
                    out[name] = value
            await send(message)

        return sender

    def _series_of(self, method: str, path: str, status: int) -> tuple[Any, Any]:
        """The metrics' children for a request's labels, looked up once per label set (at most
        ``SERIES_KEPT`` kept: a client's made-up methods are counted, never held)."""
        key = (method, path, status)
        series = self._series.get(key)
        if series is None:
            series = (
                metrics.HTTP_REQUESTS.labels(self.service, method, path, str(status)),
                metrics.HTTP_SECONDS.labels(self.service, method, path),
            )
            if len(self._series) < SERIES_KEPT:
                self._series[key] = series
        return series

    def _observe(self, scope: Scope, ex: _Exchange, elapsed: float) -> None:
        route = scope.get("route")
        path = getattr(route, "path", "unmatched")
        method = scope.get("method", "")
        requests, seconds = self._series_of(method, path, ex.status)
        requests.inc()
        seconds.observe(elapsed)
        if path not in QUIET_PATHS:
            log.info(
                "%s %s -> %d",
                method,
                scope.get("path", ""),
                ex.status,
                extra={"status": ex.status, "duration_ms": round(elapsed * 1000, 2)},
            )


class DemoClockEdge:
    """``CRM_DEMO_CLOCK`` only (crm_platform.clock, "The demo clock"): a request carrying
    ``X-CRM-Demo-Time`` runs at that time; a malformed, future or too old one is a 422 naming
    the header. Installed innermost, so the idempotency layer and the deadline see real time."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        value = Headers(scope=scope).get(DEMO_TIME_HEADER) if scope["type"] == "http" else None
        if value is None:
            await self.app(scope, receive, send)
            return
        try:
            moment = parse_demo_time(value, utcnow())
        except ValueError as exc:
            fields = [{"field": f"header.{DEMO_TIME_HEADER}", "message": str(exc)}]
            await error_response(422, "validation_error", str(exc), fields=fields)(scope, receive, send)
            return
        with simulated(moment):
            await self.app(scope, receive, send)
