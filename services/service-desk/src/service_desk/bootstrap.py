"""The one place that wires settings, runtime, consumer handlers, use cases and routers."""

from __future__ import annotations

from crm_contracts import utcnow
from crm_platform.app import create_app
from crm_platform.clock import Clock
from crm_platform.ids import new_id
from crm_platform.runtime import ServiceRuntime, Subscription
from crm_platform.settings import ServiceSettings
from crm_platform.uow import MongoUnitOfWork
from fastapi import FastAPI

from service_desk import action_items, consumers, lifecycle, store
from service_desk.api import accounts, admin, public, reviews, success, tickets
from service_desk.api import lifecycle as lifecycle_api
from service_desk.handlers import ServiceDesk
from service_desk.repository import SuccessUnit
from service_desk.settings import DEPARTMENT, health_recompute_seconds, survey_base_url, survey_secret
from service_desk.store import MongoSuccessUnit


def bootstrap(settings: ServiceSettings, *, clock: Clock | None = None) -> FastAPI:
    clock = clock or utcnow
    # The consumer's handlers are bound to the unit of work before the runtime (and its store) exists.
    uow: MongoUnitOfWork[SuccessUnit] = MongoUnitOfWork(MongoSuccessUnit, clock=clock, new_id=new_id)
    runtime = ServiceRuntime(
        settings,
        subscription=Subscription(
            topics=consumers.TOPICS,
            handlers=consumers.handlers(clock, uow),
            department=DEPARTMENT,
        ),
        indexes=store.ensure_indexes,
    )
    uow.store = runtime.store
    if (every := health_recompute_seconds(settings)) > 0:

        async def scheduled_health() -> None:
            await lifecycle.keep_health_current(uow, every)

        runtime.background.append(scheduled_health)
    app = create_app(
        settings=settings,
        title="Service desk",
        description="Customer service and customer success: accounts after the won deal, "
        "onboarding, tickets with SLA timers, CSAT, upsell signals, commitment flags and "
        "the commitment reviews of deals before sales may win them.",
        runtime=runtime,
        protected=[
            accounts.router,
            tickets.router,
            admin.router,
            lifecycle_api.router,
            success.router,
            reviews.router,
            action_items.router,
            action_items.queue_router,
        ],
        public=[public.router],
    )
    app.state.desk = ServiceDesk(runtime.store, clock)
    app.state.uow = uow
    app.state.desk.after_change = lifecycle.rescorer(app.state.uow)
    app.state.survey_secret = survey_secret(settings)
    app.state.survey_base_url = survey_base_url(settings)
    action_items.wire(app, runtime, clock)
    return app
