"""The app factory: every service gets the same edges from one place.

``/healthz`` (alive), ``/readyz`` (its database answers; the broker's state is
reported, never gated on: the outbox rides out broker outages), ``/metrics``,
request ids, JSON logs with correlation ids, JSON error bodies (422 with the
fields at fault for bad input; 413 above the body limit; 503 with ``Retry-After``
when the database cannot answer within the request deadline; 500 only for our
own bugs), JWT verification applied once where the protected routers are
mounted, the error answers documented on every route's OpenAPI entry, and
Swagger UI served from local files (``/docs``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.telemetry import TelemetryConfig
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pymongo.errors import PyMongoError
from starlette.exceptions import HTTPException as StarletteHTTPException

from crm_platform import tracing
from crm_platform.auth import CurrentUser, RevocationFeed, TokenVerifier, current_principal
from crm_platform.docs import install_local_docs
from crm_platform.edge import DemoClockEdge, HttpEdge, database_unavailable, error_response
from crm_platform.errors import DomainError, is_database_outage
from crm_platform.field_rules import PseudonymEdge
from crm_platform.heap import GC_BATCH_YOUNG_THRESHOLD as GC_BATCH_YOUNG_THRESHOLD  # re-exported
from crm_platform.heap import GC_YOUNG_THRESHOLD as GC_YOUNG_THRESHOLD
from crm_platform.heap import batch_heap as batch_heap
from crm_platform.heap import freeze_startup_heap as freeze_startup_heap
from crm_platform.idempotency import DefaultKey, IdempotencyMiddleware
from crm_platform.keys import load_public_keys
from crm_platform.logging import configure_logging
from crm_platform.openapi import document_error_responses
from crm_platform.permission_policy import PermissionGate, enforce_permission
from crm_platform.runtime import Runtime
from crm_platform.settings import ServiceSettings

# Extra ``/readyz`` fields, reported without deciding readiness (see create_app).
ReadinessReport = Callable[[], Awaitable[dict[str, Any]]]

log = logging.getLogger("crm.http")

# FastAPI's own OpenTelemetry (0.165) off: the platform traces every request itself
# (crm_platform.tracing: TracingEdge, with its own provider, never the global one), so
# FastAPI's spans, metrics and logs would only repeat them. On, it asked the three global
# providers per request whether it had anything to do (3-4 us of each request's CPU).
NO_FRAMEWORK_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}


def _field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        out.append({"field": ".".join(loc), "message": err.get("msg", ""), "type": err.get("type")})
    return out


HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    429: "too_many_requests",
    503: "unavailable",
}


def install_error_handlers(app: FastAPI, retry_after_seconds: int = 5) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        fields = _field_errors(exc)
        names = ", ".join(f["field"] for f in fields)
        return error_response(422, "validation_error", f"invalid input: {names}", fields=fields)

    @app.exception_handler(DomainError)
    async def _domain(_: Request, exc: DomainError) -> JSONResponse:
        response = error_response(exc.status_code, exc.code, exc.message, details=exc.details)
        if exc.status_code == 503:
            response.headers["Retry-After"] = str(retry_after_seconds)
        return response

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, "http_error")
        response = error_response(exc.status_code, code, str(exc.detail))
        for k, v in (exc.headers or {}).items():
            response.headers[k] = v
        return response

    @app.exception_handler(PyMongoError)
    async def _database(request: Request, exc: PyMongoError) -> JSONResponse:
        if not is_database_outage(exc):
            log.exception("database error on %s %s", request.method, request.url.path)
            return error_response(500, "internal_error", "internal error; quote the request id to support")
        # Expected during an outage: one line, no traceback.
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path, type(exc).__name__)
        return database_unavailable(retry_after_seconds)


def create_app(
    *,
    settings: ServiceSettings,
    title: str,
    runtime: Runtime | None,
    protected: Sequence[APIRouter] = (),
    public: Sequence[APIRouter] = (),
    description: str = "",
    on_startup: Callable[[FastAPI], Awaitable[None]] | None = None,
    idempotent_paths: Callable[[str], bool] = lambda _: True,
    default_idempotency_key: DefaultKey | None = None,
    keyed_on_insert: Callable[[str], bool] = lambda _: False,
    readiness_report: ReadinessReport | None = None,
    docs_page: bool = True,
    upload_paths: Callable[[str], bool] | None = None,
    pseudonymised_paths: Callable[[str], bool] = lambda _: True,
) -> FastAPI:
    """The service's app. ``idempotent_paths`` says which POST paths honour ``Idempotency-Key``
    (all by default); ``default_idempotency_key`` derives one for requests sent without it;
    ``keyed_on_insert``: those whose key is claimed on insert, not read first (idempotency).
    ``readiness_report`` adds fields to the ``/readyz`` body that are reported but do not
    decide readiness (the gateway's upstreams); only the runtime's checks do. ``docs_page=False``
    leaves ``/docs`` to the service (the gateway's index of every service's docs); the local
    Swagger assets are served either way. ``upload_paths`` says which paths take a streamed
    body up to ``CRM_MAX_UPLOAD_BYTES`` (instead of ``CRM_MAX_REQUEST_BYTES``); they are never
    idempotency-keyed by the platform (that would read the body whole).
    ``pseudonymised_paths`` says whose JSON answers the pseudonym edge rewrites for analysts and
    executives (all by default; the gateway leaves out what it forwards, already done upstream).
    """
    configure_logging(settings.service_name, settings.log_level)
    tracing.configure(settings.service_name)  # OTLP export only when OTEL_EXPORTER_OTLP_ENDPOINT is set
    app = FastAPI(
        title=title,
        description=description,
        version="1.0.0",
        lifespan=_lifespan(settings, runtime, on_startup),
        docs_url=None,
        telemetry=NO_FRAMEWORK_TELEMETRY,
    )
    app.state.settings, app.state.runtime = settings, runtime
    app.state.token_verifier = token_verifier(settings)
    install_error_handlers(app, settings.retry_after_seconds)
    keys = _Keys(idempotent_paths, default_idempotency_key, keyed_on_insert)
    _install_edge(app, settings, keys, upload_paths, pseudonymised_paths)
    install_local_docs(app, title, page=docs_page)
    _install_ops_routes(app, settings, runtime, readiness_report)
    for router in public:
        app.include_router(document_error_responses(router, protected=False))
    _mount_protected(app, settings, runtime, protected)
    return app


def _mount_protected(
    app: FastAPI, settings: ServiceSettings, runtime: Runtime | None, protected: Sequence[APIRouter]
) -> None:
    """Authentication and the permission policy applied once, here, for every protected route."""
    permissions = getattr(runtime, "permissions", None)
    if permissions is not None:
        app.state.permission_gate = PermissionGate(settings.service_name, permissions)
    for router in protected:
        app.include_router(
            document_error_responses(router, protected=True),
            dependencies=[Depends(current_principal), Depends(_permitted)],
        )


async def _permitted(request: Request, principal: CurrentUser) -> None:
    """403 when none of the user's roles holds the permission the route needs (the policy in data)."""
    await enforce_permission(request, principal.roles)


def _lifespan(
    settings: ServiceSettings,
    runtime: Runtime | None,
    on_startup: Callable[[FastAPI], Awaitable[None]] | None,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Start the revocation feed and the runtime, then ``on_startup``; stop them in reverse."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        feed = _start_revocation_feed(app, settings)
        if runtime is not None:
            await runtime.start()
        try:
            if on_startup is not None:
                await on_startup(app)
            freeze_startup_heap()
            yield
        finally:
            if feed is not None:
                feed.cancel()
            if runtime is not None:
                await runtime.stop()
            tracing.flush()

    return lifespan


@dataclass(frozen=True)
class _Keys:
    """Which POST paths honour ``Idempotency-Key``, the key derived for one sent without it,
    and which are keyed on insert (crm_platform.idempotency)."""

    paths: Callable[[str], bool]
    default: DefaultKey | None
    on_insert: Callable[[str], bool]


def _install_edge(
    app: FastAPI,
    settings: ServiceSettings,
    keys: _Keys,
    upload_paths: Callable[[str], bool] | None = None,
    pseudonymised_paths: Callable[[str], bool] = lambda _: True,
) -> None:
    """The middleware every route goes through: added inner first, so the edge (ids, limits,
    deadline) wraps the pseudonym edge, which wraps the idempotency layer (a replayed answer is
    stored real and pseudonymised for whoever replays it)."""
    idempotent_paths = keys.paths
    if upload_paths is not None:  # never keyed: the idempotency layer would read the body whole
        keyed, uploads = idempotent_paths, upload_paths
        idempotent_paths = lambda path: keyed(path) and not uploads(path)  # noqa: E731
    if settings.demo_clock:  # innermost: only the route runs at the demo time
        app.add_middleware(DemoClockEdge)
    app.add_middleware(
        IdempotencyMiddleware,
        service=settings.service_name,
        ttl=timedelta(hours=settings.idempotency_ttl_hours),
        applies=idempotent_paths,
        default_key=keys.default,
        insert_first=keys.on_insert,
    )
    # Field-level rules: analysts' and executives' JSON answers carry pseudonyms (crm_platform.field_rules).
    app.add_middleware(PseudonymEdge, applies=pseudonymised_paths)
    app.add_middleware(
        HttpEdge,
        service=settings.service_name,
        max_body_bytes=settings.max_request_bytes,
        db_deadline_seconds=settings.db_deadline_seconds,
        retry_after_seconds=settings.retry_after_seconds,
        upload_paths=upload_paths,
        max_upload_bytes=settings.max_upload_bytes,
    )
    # Outermost: the request's SERVER span covers everything, a 500 from the edge included.
    app.add_middleware(tracing.TracingEdge)


def _install_ops_routes(
    app: FastAPI,
    settings: ServiceSettings,
    runtime: Runtime | None,
    readiness_report: ReadinessReport | None,
) -> None:
    """``/healthz``, ``/readyz`` (the runtime's checks decide; the report and the broker are
    informational) and ``/metrics``."""

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": settings.service_name}

    @app.get("/readyz", tags=["ops"])
    async def readyz() -> JSONResponse:
        checks = await runtime.check_ready() if runtime is not None else {}
        ready = all(v == "ok" for v in checks.values())
        content: dict[str, Any] = {"status": "ready" if ready else "not_ready", "checks": checks}
        if readiness_report is not None:
            content.update(await readiness_report())
        broker = getattr(runtime, "broker_status", None)  # a runtime without a broker has none
        if broker is not None:
            content["broker"] = broker  # informational: never gates readiness
        return JSONResponse(status_code=200 if ready else 503, content=content)

    @app.get("/metrics", tags=["ops"], include_in_schema=False)
    async def prometheus() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def token_verifier(settings: ServiceSettings) -> TokenVerifier:
    """Verifies with the gateway's public keys; this process cannot mint tokens."""
    assert settings.jwt_public_keys_file is not None  # the settings fill in the dev keys
    keys = load_public_keys(settings.jwt_public_keys_file)
    return TokenVerifier(keys, settings.jwt_issuer, settings.jwt_audience)


def _start_revocation_feed(app: FastAPI, settings: ServiceSettings) -> asyncio.Task[None] | None:
    if not settings.revocations_url:
        return None
    verifier: TokenVerifier = app.state.token_verifier
    feed = RevocationFeed(settings.revocations_url, verifier.revocations, settings.revocation_poll_seconds)
    app.state.revocation_feed = feed
    return asyncio.create_task(feed.run(), name="revocation-feed")


def serve(app: FastAPI, settings: ServiceSettings) -> None:
    """Run under uvicorn (:class:`crm_platform.serving.CalmServer`: one wake-up a second when
    idle, not ten); SIGTERM triggers the lifespan shutdown (graceful stop)."""
    import uvicorn

    from crm_platform.serving import CalmServer

    # Keep-alive longer than typical client idle timeouts, so an idle pooled
    # connection is not closed under a client that is about to reuse it.
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
        timeout_keep_alive=75,
        loop=settings.http_loop,
        http=settings.http_parser,
    )
    server = CalmServer(config)
    with contextlib.suppress(KeyboardInterrupt):  # as uvicorn.run
        server.run()
    if not server.started:  # uvicorn.run's exit when the start-up failed
        raise SystemExit(3)
