"""Wire one department's action-item queue into its service (one call in its own module)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pymongo.asynchronous.database import AsyncDatabase

from crm_platform.action_items.handlers import ActionItemQueue
from crm_platform.action_items.repository import ensure_indexes
from crm_platform.runtime import ServiceRuntime


def install(app: FastAPI, runtime: ServiceRuntime, queue: ActionItemQueue) -> None:
    """The queue for the routes (``app.state.action_queue``), its indexes and its escalation job."""
    app.state.action_queue = queue
    previous = runtime.indexes

    async def indexes(db: AsyncDatabase[dict[str, Any]]) -> None:
        if previous is not None:
            await previous(db)
        await ensure_indexes(db)

    runtime.indexes = indexes
    runtime.background.append(queue.escalation_job(runtime.settings.action_item_escalation_seconds))
