"""Shared route dependencies: the service's store and who may do what."""

from __future__ import annotations

from typing import Any

from crm_platform.auth import Principal, Role, require_roles
from crm_platform.mongo import Store
from fastapi import Request
from pymongo.asynchronous.database import AsyncDatabase

from leads.handlers import Actor

# Marketing owns leads and scoring; admins may do anything marketing does.
WRITERS = (Role.MARKETING, Role.ADMIN)
# Sales works the leads it is handed and analysts study them: both read.
READERS = (*WRITERS, Role.SALES_REP, Role.SALES_MANAGER, Role.ANALYST)

can_write = require_roles(*WRITERS)
can_read = require_roles(*READERS)


def get_store(request: Request) -> Store:
    store: Store = request.app.state.runtime.store
    return store


def get_db(request: Request) -> AsyncDatabase[dict[str, Any]]:
    return get_store(request).db


def actor(principal: Principal) -> Actor:
    return Actor(principal.user_id, principal.username or principal.user_id)
