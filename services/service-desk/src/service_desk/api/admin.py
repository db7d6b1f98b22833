"""The CSM roster and the service desk's configuration."""

from __future__ import annotations

from crm_platform.routes import CurrentActor
from fastapi import APIRouter

from service_desk.api.deps import CONFIG_EDITING, ROSTER_EDITING, SERVICE_DESK_ROLES, UowDep
from service_desk.api.models import ConfigOut, RosterIn, RosterOut
from service_desk.domain.config import ServiceDeskConfig
from service_desk.handlers import accounts as handlers

router = APIRouter(tags=["roster and config"], dependencies=[SERVICE_DESK_ROLES])


@router.get("/csms", response_model=RosterOut, summary="The CSM roster (round-robin order)")
async def get_roster(uow: UowDep) -> RosterOut:
    return RosterOut.of(await handlers.roster(uow))


@router.put(
    "/csms",
    response_model=RosterOut,
    summary="Replace the CSM roster",
    dependencies=[ROSTER_EDITING],
)
async def put_roster(body: RosterIn, uow: UowDep, actor: CurrentActor) -> RosterOut:
    return RosterOut.of(await handlers.replace_roster(uow, body.csms, actor))


@router.get("/config", response_model=ConfigOut, summary="Onboarding checklist and SLA targets")
async def get_config(uow: UowDep) -> ConfigOut:
    return ConfigOut.of(await handlers.desk_config(uow))


@router.put(
    "/config",
    response_model=ConfigOut,
    summary="Replace the configuration (new accounts and tickets use it)",
    dependencies=[CONFIG_EDITING],
)
async def put_config(body: ServiceDeskConfig, uow: UowDep, actor: CurrentActor) -> ConfigOut:
    return ConfigOut.of(await handlers.replace_desk_config(uow, body, actor))
