"""The one place that wires settings, runtime, unit of work, consumers and routers for the service desk."""

from __future__ import annotations

from crm_platform import audit_api, custom_fields_api
from crm_platform.app import create_app
from crm_platform.auth import SERVICE_ROLES
from crm_platform.clock import Clock, system_clock
from crm_platform.custom_fields import RecordType
from crm_platform.retention import retention_job
from crm_platform.runtime import ServiceRuntime
from crm_platform.settings import ServiceSettings
from crm_platform.uow import MongoUnitOfWork
from fastapi import FastAPI

from service_desk import action_items, consumers, store
from service_desk.api import accounts, admin, lifecycle, public, reviews, success, tickets
from service_desk.api import action_items as action_items_api
from service_desk.handlers.success import keep_health_current
from service_desk.repository import SuccessUnit
from service_desk.settings import health_recompute_seconds, survey_base_url, survey_secret

DESCRIPTION = (
    "Customer service and customer success: accounts after the won deal, onboarding, tickets "
    "with SLA timers, CSAT, upsell signals, commitment flags and the commitment reviews of "
    "deals before sales may win them."
)


def build_app(settings: ServiceSettings, *, clock: Clock = system_clock) -> FastAPI:
    """The service desk app: its runtime (Mongo, outbox relay, consumer), the scheduled health
    recompute, and ``app.state.uow`` for the routes. ``clock`` is the handlers' time (the
    integration tests move it to walk SLA timers, renewals and link expiry)."""
    # The consumer's handlers are bound to the unit of work before the runtime (and its store) exists.
    uow: MongoUnitOfWork[SuccessUnit] = MongoUnitOfWork(store.MongoSuccessUnit, clock=clock)
    runtime = ServiceRuntime(
        settings,
        subscription=consumers.subscription(uow, store.ERASURE_TARGETS),
        indexes=store.ensure_indexes,
    )
    uow.store = runtime.store
    runtime.background.append(
        retention_job(
            runtime.store, store.RETENTION_RULES, settings.retention_days, settings.retention_every_seconds,
            clock=clock,
        )
    )  # fmt: skip
    if (every := health_recompute_seconds(settings)) > 0:

        async def scheduled_health() -> None:
            await keep_health_current(uow, every)

        runtime.background.append(scheduled_health)
    app = create_app(
        settings=settings,
        title="Service desk",
        description=DESCRIPTION,
        runtime=runtime,
        protected=[
            accounts.router,
            tickets.router,
            admin.router,
            lifecycle.router,
            success.router,
            reviews.router,
            action_items_api.router,
            action_items.queue_router,
            audit_api.router(),
            custom_fields_api.router(tuple(SERVICE_ROLES)),
        ],
        public=[public.router],
    )
    app.state.uow = uow
    custom_fields_api.wire(app, runtime.store, [RecordType.TICKET], settings.config_cache_seconds)
    app.state.survey_secret = survey_secret(settings)
    app.state.survey_base_url = survey_base_url(settings)
    action_items.wire(app, runtime, uow, clock)
    return app
