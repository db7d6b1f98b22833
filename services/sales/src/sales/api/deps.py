"""Shared route dependencies: the service's store, the acting user, and who may do what."""

from __future__ import annotations

from typing import Annotated, Any

from crm_platform.auth import CurrentUser, Role, require_roles
from crm_platform.mongo import Store
from fastapi import Depends, Path, Request
from pymongo.asynchronous.database import AsyncDatabase

from sales.domain.access import Actor

# Sales works leads and deals; managers run the team and its configuration; admins
# may do anything a manager may; analysts read the forecast and the pipeline
# definition it is computed from.
SALES = (Role.SALES_REP, Role.SALES_MANAGER, Role.ADMIN)
MANAGERS = (Role.SALES_MANAGER, Role.ADMIN)
FORECAST_READERS = (*SALES, Role.ANALYST)

sales_only = require_roles(*SALES)
managers_only = require_roles(*MANAGERS)
forecast_readers = require_roles(*FORECAST_READERS)


def get_store(request: Request) -> Store:
    store: Store = request.app.state.runtime.store
    return store


def get_db(request: Request) -> AsyncDatabase[dict[str, Any]]:
    return get_store(request).db


def get_actor(principal: CurrentUser) -> Actor:
    return Actor.of(principal.user_id, principal.roles, principal.username)


StoreDep = Annotated[Store, Depends(get_store)]
DbDep = Annotated[AsyncDatabase[dict[str, Any]], Depends(get_db)]
ActorDep = Annotated[Actor, Depends(get_actor)]
LeadId = Annotated[str, Path(min_length=1, max_length=200)]
OpportunityId = Annotated[str, Path(min_length=1, max_length=100)]
