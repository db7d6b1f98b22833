"""Route dependencies of the leads API: who may do what, and the unit of work.

The acting user and the database come from ``crm_platform.routes`` (``CurrentActor``,
``DbDep``); roles are required once per router (its audience, ``READERS``) and
narrowed on the routes that change something (``can_write``).
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from crm_platform.auth import Role, require_roles
from crm_platform.uow import UnitOfWork
from fastapi import Depends, Request

from leads.behaviour_groups import BehaviourGroups
from leads.capture_groups import CaptureGroups
from leads.repository import LeadsUnit

# Marketing owns leads and scoring; admins may do anything marketing does.
WRITERS = (Role.MARKETING, Role.MARKETING_MANAGER, Role.ADMIN)
# Sales works the leads it is handed and analysts study them: both read.
READERS = (*WRITERS, Role.SALES_REP, Role.SALES_MANAGER, Role.ANALYST)

can_write = require_roles(*WRITERS)


async def get_uow(request: Request) -> UnitOfWork[LeadsUnit]:
    uow: UnitOfWork[LeadsUnit] = request.app.state.uow
    return uow


UowDep = Annotated[UnitOfWork[LeadsUnit], Depends(get_uow)]


async def get_capture_groups(request: Request) -> CaptureGroups:
    groups: CaptureGroups = request.app.state.capture_groups
    return groups


CaptureGroupsDep = Annotated[CaptureGroups, Depends(get_capture_groups)]


async def get_behaviour_groups(request: Request) -> BehaviourGroups:
    groups: BehaviourGroups = request.app.state.behaviour_groups
    return groups


BehaviourGroupsDep = Annotated[BehaviourGroups, Depends(get_behaviour_groups)]


async def get_bulk_turns(request: Request) -> asyncio.Semaphore:
    """Turns for bulk captures' transactions (``LeadsSettings.bulk_in_flight`` at once)."""
    turns: asyncio.Semaphore = request.app.state.bulk_turns
    return turns


BulkTurnsDep = Annotated[asyncio.Semaphore, Depends(get_bulk_turns)]
