"""The one place that wires the gateway: settings, runtime, handlers' dependencies, upstreams, routers."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from crm_contracts.access import CONSUMES
from crm_contracts.events.governance import ErasureCompletedV1, ErasureErasedV1
from crm_platform import audit_api
from crm_platform.app import create_app
from crm_platform.auth import TokenIssuer, TokenVerifier
from crm_platform.keys import load_private_key
from crm_platform.logging import request_id_var
from crm_platform.retention import retention_job
from crm_platform.runtime import ServiceRuntime, Subscription
from crm_platform.uow import MongoUnitOfWork, bind_event
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from gateway import handlers, store
from gateway.api import auth, console, docs, erasure, permissions, proxy, users
from gateway.api.deps import active_principal
from gateway.domain.routes import is_upload
from gateway.handlers import Deps, Tokens
from gateway.logctx import RequestLogFields, install_log_filter
from gateway.repository import GatewayUnit
from gateway.revocations import RevocationCache
from gateway.security import Passwords
from gateway.settings import GatewaySettings
from gateway.upstream import UpstreamError, Upstreams

DESCRIPTION = """The single entry point of the CRM.

* `POST /auth/login` gives a short-lived access token (send it as `Authorization: Bearer
  <token>`) and a refresh token (`POST /auth/refresh`); `POST /auth/logout` revokes both.
* `/users` manages accounts (admin only); `/permissions` is the role -> permission policy
  (admins change it, auditors read it; every department is told by the `permissions.changed` event).
* `/erasure-requests`: admins file a request to forget a person, every department erases them
  and confirms; admins and auditors follow each department's confirmation.
* `/api/{service}/{path}` forwards to leads, sales, service-desk and analytics after checking
  the token and the route table; `/docs` links every service's API documentation.
"""


def build_app(settings: GatewaySettings) -> FastAPI:
    upstreams = _upstreams(settings)
    runtime, uow = _runtime(settings, upstreams)

    async def on_startup(app: FastAPI) -> None:
        await handlers.bootstrap_admin(app.state.deps, settings.bootstrap_admin_password)
        # The revocation list is in memory before the first request is served.
        await app.state.deps.revocations.reload()

    async def upstream_health() -> dict[str, Any]:
        # Ready when its own database answers (the runtime's check); upstreams are reported, not
        # required: one department down must not take the entry point out of the load balancer.
        return {"upstreams": await upstreams.health()}

    app = create_app(
        settings=settings,
        title="CRM gateway",
        description=DESCRIPTION,
        runtime=runtime,
        # Public: login and the documentation; the rest needs a valid token.
        public=[auth.login_router, auth.keys_router, auth.internal_router, docs.router, proxy.public_router],
        protected=_protected_routers(),
        on_startup=on_startup,
        readiness_report=upstream_health,
        # The gateway's /docs lists every service's documentation (its own page is /docs/gateway).
        docs_page=False,
        upload_paths=is_upload,
        # Forwarded requests carry their Idempotency-Key to the department, which keeps it
        # with the effect; logins create nothing; the console's forms are the console's.
        idempotent_paths=lambda path: (
            not path.startswith(("/api/", "/auth/")) and not console.is_console_path(path)
        ),
        # Forwarded answers were pseudonymised by the department that wrote them (once only).
        pseudonymised_paths=lambda path: not path.startswith("/api/"),
    )
    app.state.upstreams = upstreams
    app.state.deps = deps = _deps(settings, runtime, uow, app.state.token_verifier)
    app.state.token_verifier = deps.revocations.verifier
    runtime.background.append(lambda: deps.revocations.keep_fresh(settings.revocation_refresh_seconds))

    app.add_exception_handler(UpstreamError, _upstream_error)  # type: ignore[arg-type]
    # Last: the console gets only the paths no route above matched.
    app.include_router(console.router)
    app.add_middleware(RequestLogFields)
    install_log_filter()
    proxy.try_forwarding_first(app)  # after every route is mounted
    return app


def _upstreams(settings: GatewaySettings) -> Upstreams:
    return Upstreams(
        settings.upstreams,
        timeout=settings.upstream_timeout_seconds,
        connect_timeout=settings.upstream_connect_timeout_seconds,
        max_connections=settings.upstream_max_connections,
    )


def _protected_routers() -> list[APIRouter]:
    return [
        auth.me_router,
        users.router,
        permissions.router,
        erasure.router,
        audit_api.router(Depends(active_principal)),
        proxy.router,
    ]


async def _upstream_error(_: Request, exc: UpstreamError) -> JSONResponse:
    body = {
        "error": exc.code,
        "message": exc.message,
        "service": exc.service,
        "request_id": request_id_var.get(),
    }
    return JSONResponse(status_code=exc.status_code, content=body)


def _runtime(
    settings: GatewaySettings, upstreams: Upstreams
) -> tuple[ServiceRuntime, MongoUnitOfWork[GatewayUnit]]:
    """The gateway's runtime: its relay publishes the permission policy's changes and erasure
    requests, its consumer folds the departments' confirmations of those requests; the
    retention job runs beside it."""
    uow: MongoUnitOfWork[GatewayUnit] = MongoUnitOfWork(store.MongoGatewayUnit)
    subscription = Subscription(
        topics=list(CONSUMES["gateway"]),
        handlers={
            ErasureCompletedV1.event_type: bind_event(uow, handlers.on_erasure_completed),
            ErasureErasedV1.event_type: bind_event(uow, handlers.on_erasure_erased),
        },
        # A confirmation moves a request's status, which an administrator reads minutes later,
        # not within a second: the patient idle pause (0.5 s), not the departments' 0.1 s
        # (about 8 fewer fetch rounds a second in the idle gateway; docs/performance.md).
        patient=True,
    )
    runtime = ServiceRuntime(
        settings, subscription=subscription, indexes=store.ensure_indexes, on_stop=[upstreams.aclose]
    )
    uow.store = runtime.store
    runtime.background.append(
        retention_job(
            runtime.store, store.RETENTION_RULES, settings.retention_days, settings.retention_every_seconds
        )
    )
    return runtime, uow


def _deps(
    settings: GatewaySettings,
    runtime: ServiceRuntime,
    uow: MongoUnitOfWork[GatewayUnit],
    platform: TokenVerifier,
) -> Deps:
    """The handlers' dependencies with the signing key; the gateway verifies its own key's tokens
    even when the public key file does not list it yet (the first step of a rotation)."""
    assert settings.jwt_private_key_file is not None  # the settings fill in the dev key
    key = load_private_key(settings.jwt_private_key_file)
    verifier = TokenVerifier(
        {**platform.public_keys, key.kid: key.public}, settings.jwt_issuer, settings.jwt_audience
    )
    access_ttl = timedelta(minutes=settings.access_token_ttl_minutes)
    repos = store.MongoRepositories(runtime.db)
    return Deps(
        uow=uow,
        repos=repos,
        tokens=Tokens(
            TokenIssuer(key, settings.jwt_issuer, settings.jwt_audience),
            access_ttl,
            timedelta(minutes=settings.refresh_token_ttl_minutes),
        ),
        revocations=RevocationCache(verifier, repos.revocations, access_ttl),
        password_policy=settings.password_policy,
        throttles=settings.throttles(),
        passwords=Passwords(),
        max_concurrent_logins=settings.login_max_concurrent,
        on_policy_change=runtime.permissions.invalidate,
    )
