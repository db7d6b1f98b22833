"""Route dependencies of sales: who may do what, and the unit of work handlers run in.

The acting user (``CurrentActor``), the store and the database come from
``crm_platform.routes``; each router requires its audience once
(``APIRouter(dependencies=[sales_only])``) and a route narrows it where needed
(``dependencies=[managers_only]``).
"""

from __future__ import annotations

from typing import Annotated

from crm_platform.auth import Role
from crm_platform.routes import require_roles
from crm_platform.uow import MongoUnitOfWork
from fastapi import Depends, Path, Request

from sales.repository import SalesUnit

# Sales works leads and deals; managers run the team and its configuration; admins
# may do anything a manager may; analysts read the forecast and the pipeline
# definition it is computed from.
SALES = (Role.SALES_REP, Role.SALES_MANAGER, Role.ADMIN)
MANAGERS = (Role.SALES_MANAGER, Role.ADMIN)
FORECAST_READERS = (*SALES, Role.ANALYST)

sales_only = require_roles(*SALES)
managers_only = require_roles(*MANAGERS)
forecast_readers = require_roles(*FORECAST_READERS)


async def get_uow(request: Request) -> MongoUnitOfWork[SalesUnit]:
    uow: MongoUnitOfWork[SalesUnit] = request.app.state.uow
    return uow


UowDep = Annotated[MongoUnitOfWork[SalesUnit], Depends(get_uow)]
LeadId = Annotated[str, Path(min_length=1, max_length=200)]
OpportunityId = Annotated[str, Path(min_length=1, max_length=100)]
