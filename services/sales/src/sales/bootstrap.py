"""The one place that wires settings, runtime, unit of work, consumers and routers for sales."""

from __future__ import annotations

from functools import partial
from typing import Any

from crm_platform import audit_api, custom_fields_api
from crm_platform.app import create_app
from crm_platform.custom_fields import RecordType
from crm_platform.imports.settings import ImportSettings
from crm_platform.retention import retention_job
from crm_platform.runtime import ServiceRuntime
from crm_platform.settings import ServiceSettings
from crm_platform.uow import MongoUnitOfWork
from fastapi import FastAPI
from pymongo.asynchronous.database import AsyncDatabase

from sales import action_items, consumers, store
from sales.api import accounts, contact_imports, contacts, forecast, inbox, opportunities, team
from sales.api.deps import SALES
from sales.domain.inbox import DEFAULT_SLA_MINUTES
from sales.domain.review import ReviewPolicy
from sales.importer import ContactImportWorker
from sales.repository import SalesUnit
from sales.settings import SalesSettings

DESCRIPTION = (
    "Sales' department service: the inbox of qualified leads handed over by marketing "
    "(round-robin assignment, response SLA, verdicts back to marketing), the pipeline with "
    "required fields per stage, opportunities and their activities, the weighted forecast, "
    "and won deals handed to customer success with the commitments sales made."
)


def build_app(settings: ServiceSettings) -> FastAPI:
    """The sales app: its runtime (Mongo, outbox relay, consumer) and ``app.state.uow`` for the routes."""
    sla = getattr(settings, "lead_response_sla_minutes", DEFAULT_SLA_MINUTES)
    review = settings.review_policy() if isinstance(settings, SalesSettings) else ReviewPolicy()

    async def indexes(db: AsyncDatabase[dict[str, Any]]) -> None:
        await store.ensure_indexes(db, default_sla_minutes=sla, default_review=review)

    # The consumer's handlers are bound to the unit of work before the runtime (and its store) exists.
    config = store.ConfigCache(settings.config_cache_seconds)
    uow: MongoUnitOfWork[SalesUnit] = MongoUnitOfWork(partial(store.MongoSalesUnit, config_cache=config))
    runtime = ServiceRuntime(
        settings, subscription=consumers.subscription(uow, store.ERASURE_TARGETS), indexes=indexes
    )
    uow.store = runtime.store
    runtime.background.append(
        retention_job(
            runtime.store, store.RETENTION_RULES, settings.retention_days, settings.retention_every_seconds
        )
    )
    app = create_app(
        settings=settings,
        title="CRM sales",
        description=DESCRIPTION,
        runtime=runtime,
        protected=[
            inbox.router,
            opportunities.router,
            accounts.router,
            # /contacts/imports and /contacts/import-mappings before /contacts/{contact_id}
            contact_imports.router,
            contact_imports.mappings_router,
            contacts.router,
            forecast.router,
            team.router,
            action_items.router,
            audit_api.router(),
            custom_fields_api.router(SALES),
        ],
        upload_paths=contact_imports.is_upload,
    )
    app.state.uow = uow
    custom_fields_api.wire(
        app, runtime.store, [RecordType.ACCOUNT, RecordType.OPPORTUNITY], settings.config_cache_seconds
    )
    _wire_imports(app, runtime, uow, ImportSettings.of_service(settings))
    action_items.wire(app, runtime)
    return app


def _wire_imports(
    app: FastAPI, runtime: ServiceRuntime, uow: MongoUnitOfWork[SalesUnit], s: ImportSettings
) -> None:
    """Contact imports (``crm_platform.imports``): the settings the routes read, the worker."""
    app.state.import_settings = s
    worker = ContactImportWorker(
        uow,
        runtime.store.db,
        **s.worker_options(),
    )
    app.state.import_worker = worker
    if s.import_worker_enabled:
        runtime.background.append(worker.run)
