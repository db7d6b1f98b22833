"""Dependencies every router uses."""

from __future__ import annotations

from typing import Annotated

from crm_platform.auth import SERVICE_ROLES, Role, require_roles
from fastapi import Depends, Request

from service_desk import lifecycle
from service_desk.domain.success_config import SuccessConfig
from service_desk.handlers import ServiceDesk
from service_desk.lifecycle import Uow


def get_desk(request: Request) -> ServiceDesk:
    desk: ServiceDesk = request.app.state.desk
    return desk


async def get_uow(request: Request) -> Uow:
    uow: Uow = request.app.state.uow
    return uow


def get_survey_secret(request: Request) -> bytes:
    secret: bytes = request.app.state.survey_secret
    return secret


async def get_success_config(life: Annotated[Uow, Depends(get_uow)]) -> SuccessConfig:
    config, _ = await lifecycle.success_config(life)
    return config


Desk = Annotated[ServiceDesk, Depends(get_desk)]
Life = Annotated[Uow, Depends(get_uow)]
Success = Annotated[SuccessConfig, Depends(get_success_config)]
Secret = Annotated[bytes, Depends(get_survey_secret)]

# Every service-desk route: service reps, customer success managers, admins.
SERVICE_DESK_ROLES = require_roles(*sorted(SERVICE_ROLES))
# Customer success leads: tiers, account managers, the roster.
CSM_LEADS = require_roles(Role.CUSTOMER_SUCCESS_MANAGER, Role.SERVICE_LEAD, Role.ADMIN)
ADMINS = require_roles(Role.ADMIN)
