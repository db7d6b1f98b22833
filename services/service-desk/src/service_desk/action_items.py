"""Customer success' own queue of voice-of-the-customer action items (``crm_platform.action_items``).

Items customer success raises for itself (``handlers/action_items.py``) land here; members
accept, complete or decline them, the service lead (re)assigns them and gets them when
overdue; each change shows on the raised item, like the steps marketing and sales send back.
"""

from __future__ import annotations

from crm_contracts.events.action_items import CUSTOMER_SUCCESS
from crm_platform.action_items.api import action_queue_router
from crm_platform.action_items.domain import ActionItem
from crm_platform.action_items.handlers import ActionItemQueue
from crm_platform.action_items.wiring import install
from crm_platform.auth import SERVICE_ROLES, Role
from crm_platform.clock import Clock
from crm_platform.mongo import Tx
from crm_platform.runtime import ServiceRuntime
from crm_platform.uow import MongoUnitOfWork
from fastapi import FastAPI

from service_desk.handlers.action_items import own_queue_changed
from service_desk.repository import SuccessUnit

MEMBERS = tuple(sorted(SERVICE_ROLES))
MANAGERS = (Role.SERVICE_LEAD, Role.ADMIN)

queue_router = action_queue_router(members=MEMBERS, managers=MANAGERS, department_label="Customer success")


def wire(
    app: FastAPI, runtime: ServiceRuntime, uow: MongoUnitOfWork[SuccessUnit], clock: Clock
) -> ActionItemQueue:
    async def on_change(tx: Tx, item: ActionItem) -> None:
        await own_queue_changed(uow.joining(tx), item)

    queue = ActionItemQueue(
        runtime.store, CUSTOMER_SUCCESS, manager=str(Role.SERVICE_LEAD), clock=clock, on_change=on_change
    )
    install(app, runtime, queue)
    return queue
