"""The CSM roster and the service desk's configuration."""

from __future__ import annotations

from crm_platform.auth import CurrentUser, require_roles
from fastapi import APIRouter

from service_desk.api.deps import SERVICE_DESK_ROLES, Desk
from service_desk.api.models import ConfigOut, RosterIn, RosterOut
from service_desk.domain.access import CONFIG_EDITORS, ROSTER_EDITORS
from service_desk.domain.config import ServiceDeskConfig

router = APIRouter(tags=["roster and config"], dependencies=[SERVICE_DESK_ROLES])


@router.get("/csms", response_model=RosterOut, summary="The CSM roster (round-robin order)")
async def get_roster(desk: Desk) -> RosterOut:
    return RosterOut.of(await desk.roster())


@router.put(
    "/csms",
    response_model=RosterOut,
    summary="Replace the CSM roster",
    dependencies=[require_roles(*sorted(ROSTER_EDITORS))],
)
async def put_roster(body: RosterIn, desk: Desk, user: CurrentUser) -> RosterOut:
    return RosterOut.of(await desk.replace_roster(body.csms, user))


@router.get("/config", response_model=ConfigOut, summary="Onboarding checklist and SLA targets")
async def get_config(desk: Desk) -> ConfigOut:
    return ConfigOut.of(await desk.config())


@router.put(
    "/config",
    response_model=ConfigOut,
    summary="Replace the configuration (new accounts and tickets use it)",
    dependencies=[require_roles(*sorted(CONFIG_EDITORS))],
)
async def put_config(body: ServiceDeskConfig, desk: Desk, user: CurrentUser) -> ConfigOut:
    return ConfigOut.of(await desk.replace_config(body, user))
