"""Route dependencies of the service desk: who may do what, and what the routes share.

The acting user (``CurrentActor``), the store and the database come from
``crm_platform.routes``; each router requires its audience once
(``APIRouter(dependencies=[SERVICE_DESK_ROLES])``) and a route narrows it where needed
(``dependencies=[CSM_LEADS]``).
"""

from __future__ import annotations

from typing import Annotated

from crm_platform.auth import SERVICE_ROLES, Role
from crm_platform.routes import require_roles
from crm_platform.uow import MongoUnitOfWork
from fastapi import Depends, Request

from service_desk.domain.access import CONFIG_EDITORS, ROSTER_EDITORS
from service_desk.domain.success_config import SuccessConfig
from service_desk.handlers import success
from service_desk.repository import SuccessUnit


async def get_uow(request: Request) -> MongoUnitOfWork[SuccessUnit]:
    uow: MongoUnitOfWork[SuccessUnit] = request.app.state.uow
    return uow


async def get_survey_secret(request: Request) -> bytes:
    secret: bytes = request.app.state.survey_secret
    return secret


async def get_success_config(uow: Annotated[MongoUnitOfWork[SuccessUnit], Depends(get_uow)]) -> SuccessConfig:
    return (await success.success_config(uow)).config


UowDep = Annotated[MongoUnitOfWork[SuccessUnit], Depends(get_uow)]
Success = Annotated[SuccessConfig, Depends(get_success_config)]
Secret = Annotated[bytes, Depends(get_survey_secret)]

# Every service-desk route: service reps, customer success managers, admins.
SERVICE_DESK_ROLES = require_roles(*sorted(SERVICE_ROLES))
# Customer success leads: tiers, account managers, commitment reviews.
CSM_LEADS = require_roles(Role.CUSTOMER_SUCCESS_MANAGER, Role.SERVICE_LEAD, Role.ADMIN)
# Who may change the CSM roster and hand accounts to another CSM; who may change the config.
ROSTER_EDITING = require_roles(*sorted(ROSTER_EDITORS))
CONFIG_EDITING = require_roles(*sorted(CONFIG_EDITORS))
ADMINS = require_roles(Role.ADMIN)
