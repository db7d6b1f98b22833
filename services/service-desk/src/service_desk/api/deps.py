"""Dependencies every router uses."""

from __future__ import annotations

from typing import Annotated

from crm_platform.auth import SERVICE_ROLES, require_roles
from fastapi import Depends, Request

from service_desk.handlers import ServiceDesk


def get_desk(request: Request) -> ServiceDesk:
    desk: ServiceDesk = request.app.state.desk
    return desk


Desk = Annotated[ServiceDesk, Depends(get_desk)]

# Every service-desk route: service reps, customer success managers, admins.
SERVICE_DESK_ROLES = require_roles(*sorted(SERVICE_ROLES))
