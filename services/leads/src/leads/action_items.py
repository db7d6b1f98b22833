"""Marketing's queue of voice-of-the-customer action items (the shared ``crm_platform.action_items``).

Customer success raises an item for marketing (``action_item.raised_for_marketing``);
it lands here, marketing accepts, completes or declines it, the marketing manager
(re)assigns it and gets it when it is overdue; each change goes back to customer
success (``action_item.updated_by_marketing``).
"""

from __future__ import annotations

from crm_contracts.events.action_items import MARKETING
from crm_platform.action_items.api import action_queue_router
from crm_platform.action_items.handlers import ActionItemQueue, raised_handlers
from crm_platform.action_items.wiring import install
from crm_platform.auth import Role
from crm_platform.consumer import Handler
from crm_platform.runtime import ServiceRuntime
from fastapi import FastAPI

MEMBERS = (Role.MARKETING, Role.MARKETING_MANAGER, Role.ADMIN)
MANAGERS = (Role.MARKETING_MANAGER, Role.ADMIN)

router = action_queue_router(members=MEMBERS, managers=MANAGERS, department_label="Marketing")
HANDLERS: dict[str, Handler] = raised_handlers(MARKETING)


def wire(app: FastAPI, runtime: ServiceRuntime) -> ActionItemQueue:
    queue = ActionItemQueue(runtime.store, MARKETING, manager=str(Role.MARKETING_MANAGER))
    install(app, runtime, queue)
    return queue
