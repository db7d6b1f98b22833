"""The app factory: every service gets the same edges from one place.

``/healthz`` (alive), ``/readyz`` (its database and broker answer), ``/metrics``,
request ids, JSON logs with correlation ids, JSON error bodies (422 with the
fields at fault for bad input; 500 only for our own bugs), and JWT verification
applied once where the protected routers are mounted.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from crm_platform import metrics
from crm_platform.auth import RevocationFeed, TokenVerifier, current_principal
from crm_platform.errors import DomainError
from crm_platform.keys import load_public_keys
from crm_platform.logging import configure_logging, correlation_id_var, request_id_var
from crm_platform.runtime import ServiceRuntime
from crm_platform.settings import ServiceSettings

log = logging.getLogger("crm.http")


def _field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        out.append({"field": ".".join(loc), "message": err.get("msg", ""), "type": err.get("type")})
    return out


def _error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    body = {"error": code, "message": message, "request_id": request_id_var.get(), **extra}
    return JSONResponse(status_code=status, content=jsonable_encoder(body))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        fields = _field_errors(exc)
        names = ", ".join(f["field"] for f in fields)
        return _error(422, "validation_error", f"invalid input: {names}", fields=fields)

    @app.exception_handler(DomainError)
    async def _domain(_: Request, exc: DomainError) -> JSONResponse:
        return _error(exc.status_code, exc.code, exc.message, details=exc.details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed"}
        response = _error(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))
        for k, v in (exc.headers or {}).items():
            response.headers[k] = v
        return response

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error(500, "internal_error", "internal error; quote the request id to support")


def install_request_context(app: FastAPI, service: str) -> None:
    @app.middleware("http")
    async def _context(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex
        cid = request.headers.get("x-correlation-id") or rid
        r_token, c_token = request_id_var.set(rid), correlation_id_var.set(cid)
        started = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            response.headers["x-request-id"] = rid
            response.headers["x-correlation-id"] = cid
            return response
        finally:
            route = request.scope.get("route")
            path = getattr(route, "path", "unmatched")
            elapsed = time.perf_counter() - started
            metrics.HTTP_REQUESTS.labels(service, request.method, path, str(status)).inc()
            metrics.HTTP_SECONDS.labels(service, request.method, path).observe(elapsed)
            if path not in ("/healthz", "/readyz", "/metrics"):
                log.info(
                    "%s %s -> %d",
                    request.method,
                    request.url.path,
                    status,
                    extra={"status": status, "duration_ms": round(elapsed * 1000, 2)},
                )
            request_id_var.reset(r_token)
            correlation_id_var.reset(c_token)


def create_app(
    *,
    settings: ServiceSettings,
    title: str,
    runtime: ServiceRuntime | None,
    protected: Sequence[APIRouter] = (),
    public: Sequence[APIRouter] = (),
    description: str = "",
    on_startup: Callable[[FastAPI], Awaitable[None]] | None = None,
) -> FastAPI:
    configure_logging(settings.service_name, settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        feed = _start_revocation_feed(app, settings)
        if runtime is not None:
            await runtime.start()
        try:
            if on_startup is not None:
                await on_startup(app)
            yield
        finally:
            if feed is not None:
                feed.cancel()
            if runtime is not None:
                await runtime.stop()

    app = FastAPI(title=title, description=description, version="1.0.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.runtime = runtime
    app.state.token_verifier = token_verifier(settings)
    install_error_handlers(app)
    install_request_context(app, settings.service_name)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": settings.service_name}

    @app.get("/readyz", tags=["ops"])
    async def readyz() -> JSONResponse:
        checks = await runtime.check_ready() if runtime is not None else {}
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse(
            status_code=200 if ready else 503,
            content={"status": "ready" if ready else "not_ready", "checks": checks},
        )

    @app.get("/metrics", tags=["ops"], include_in_schema=False)
    async def prometheus() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    for router in public:
        app.include_router(router)
    for router in protected:
        # Authentication applied once, here, for every protected route.
        app.include_router(router, dependencies=[Depends(current_principal)])
    return app


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
    """Run under uvicorn; SIGTERM triggers the lifespan shutdown (graceful stop)."""
    import uvicorn

    # Keep-alive longer than typical client idle timeouts, so an idle pooled
    # connection is not closed under a client that is about to reuse it.
    uvicorn.run(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
        timeout_keep_alive=75,
    )
