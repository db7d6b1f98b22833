"""The one place that wires settings, runtime, handlers and routers for the leads service."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Callable
from datetime import timedelta
from functools import partial

from crm_platform import audit_api, custom_fields_api
from crm_platform.app import create_app
from crm_platform.custom_fields import RecordType
from crm_platform.idempotency import canonical
from crm_platform.retention import retention_job
from crm_platform.runtime import ServiceRuntime
from crm_platform.settings import ServiceSettings
from crm_platform.uow import MongoUnitOfWork
from fastapi import FastAPI

from leads import action_items, consumers, store
from leads.api import imports as imports_api
from leads.api import leads as leads_api
from leads.api import scoring as scoring_api
from leads.api.deps import READERS
from leads.behaviour_groups import BehaviourGroups
from leads.capture_groups import CaptureGroups
from leads.importer import ImportWorker
from leads.repository import LeadsUnit
from leads.settings import LeadsSettings
from leads.store import MongoLeadsUnit

BEHAVIOURS_PATH = re.compile(r"^/leads/[^/]+/behaviours$")


def behaviour_retry_key(window: timedelta) -> Callable[[str, bytes], tuple[str, timedelta] | None]:
    """The default Idempotency-Key of a behaviour: its content (behaviour, occurred_at, meta).

    Only when the client sent neither ``Idempotency-Key`` nor ``external_id`` (an
    ``external_id`` is deduplicated for good by the handler). The key holds for
    ``window``: an identical POST by the same caller within it is a retry and gets
    the first answer; send ``occurred_at`` or ``external_id`` to record genuinely
    repeated identical behaviour.
    """

    def derive(path: str, body: bytes) -> tuple[str, timedelta] | None:
        if not BEHAVIOURS_PATH.match(path):
            return None
        try:
            parsed = json.loads(body)
        except ValueError:
            return None
        if not isinstance(parsed, dict) or parsed.get("external_id") is not None:
            return None
        return f"behaviour-content:{hashlib.sha256(canonical(body)).hexdigest()}", window

    return derive


def build_app(settings: ServiceSettings) -> FastAPI:
    s = LeadsSettings.of(settings)
    rules = store.RulesCache(s.config_cache_seconds)
    uow: MongoUnitOfWork[LeadsUnit] = MongoUnitOfWork(partial(MongoLeadsUnit, rules_cache=rules))
    sub = consumers.subscription(uow, store.ERASURE_TARGETS)
    runtime = ServiceRuntime(s, subscription=sub, indexes=store.ensure_indexes)
    uow.store = runtime.store
    runtime.background.append(
        retention_job(runtime.store, store.RETENTION_RULES, s.retention_days, s.retention_every_seconds)
    )
    runtime.background.append(store.list_keys_job(runtime.store.db))
    app = create_app(
        settings=s,
        title="CRM leads (marketing)",
        description=(
            "Marketing's department service: captures leads (merging duplicates by email), "
            "scores them from behaviour with versioned rules, hands qualified leads to sales "
            "(lead.qualified) and closes the loop with sales' verdict (lead.verdict)."
        ),
        runtime=runtime,
        # /leads/export before /leads/{lead_id}: the first matching route wins.
        protected=[
            imports_api.export_router,
            leads_api.router,
            scoring_api.router,
            imports_api.router,
            imports_api.mappings_router,
            action_items.router,
            audit_api.router(),
            custom_fields_api.router(READERS),
        ],
        default_idempotency_key=behaviour_retry_key(timedelta(seconds=s.behaviour_retry_window_seconds)),
        # A behaviour's handler begins with its transaction: its key is not read before it.
        keyed_on_insert=lambda path: BEHAVIOURS_PATH.match(path) is not None,
        upload_paths=imports_api.is_upload,
    )
    app.state.uow = uow
    app.state.capture_groups = CaptureGroups(uow, runtime.store.source)
    app.state.behaviour_groups = BehaviourGroups(uow, runtime.store.source)
    app.state.bulk_turns = asyncio.Semaphore(s.bulk_in_flight)
    app.state.import_settings = s
    fields = custom_fields_api.wire(app, runtime.store, [RecordType.LEAD], s.config_cache_seconds)
    worker = ImportWorker(uow, runtime.store.db, **s.worker_options(), custom_fields=fields)
    app.state.import_worker = worker
    if s.import_worker_enabled:
        runtime.background.append(worker.run)
    action_items.wire(app, runtime)
    return app
