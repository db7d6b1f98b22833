"""Sales' queue of voice-of-the-customer action items (the shared ``crm_platform.action_items``).

Customer success raises an item for sales (``action_item.raised_for_sales``); it lands
here, reps accept, complete or decline it, the sales manager (re)assigns it and gets
it when it is overdue; each change goes back to customer success
(``action_item.updated_by_sales``).
"""

from __future__ import annotations

from crm_contracts.events.action_items import SALES
from crm_platform.action_items.api import action_queue_router
from crm_platform.action_items.handlers import ActionItemQueue, raised_handlers
from crm_platform.action_items.wiring import install
from crm_platform.auth import Role
from crm_platform.consumer import Handler
from crm_platform.runtime import ServiceRuntime
from fastapi import FastAPI

MEMBERS = (Role.SALES_REP, Role.SALES_MANAGER, Role.ADMIN)
MANAGERS = (Role.SALES_MANAGER, Role.ADMIN)

router = action_queue_router(members=MEMBERS, managers=MANAGERS, department_label="Sales")
HANDLERS: dict[str, Handler] = raised_handlers(SALES)


def wire(app: FastAPI, runtime: ServiceRuntime) -> ActionItemQueue:
    queue = ActionItemQueue(runtime.store, SALES, manager=str(Role.SALES_MANAGER))
    install(app, runtime, queue)
    return queue
