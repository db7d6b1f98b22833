"""The one place that wires settings, runtime, consumer handlers, use cases and routers."""

from __future__ import annotations

from crm_contracts import utcnow
from crm_platform.app import create_app
from crm_platform.clock import Clock
from crm_platform.runtime import ServiceRuntime, Subscription
from crm_platform.settings import ServiceSettings
from fastapi import FastAPI

from service_desk import consumers, store
from service_desk.api import accounts, admin, tickets
from service_desk.handlers import ServiceDesk
from service_desk.settings import DEPARTMENT


def bootstrap(settings: ServiceSettings, *, clock: Clock | None = None) -> FastAPI:
    clock = clock or utcnow
    runtime = ServiceRuntime(
        settings,
        subscription=Subscription(
            topics=consumers.TOPICS,
            handlers=consumers.handlers(clock),
            department=DEPARTMENT,
        ),
        indexes=store.ensure_indexes,
    )
    app = create_app(
        settings=settings,
        title="Service desk",
        description="Customer service and customer success: accounts after the won deal, "
        "onboarding, tickets with SLA timers, CSAT, upsell signals and commitment flags.",
        runtime=runtime,
        protected=[accounts.router, tickets.router, admin.router],
    )
    app.state.desk = ServiceDesk(runtime.store, clock)
    return app
