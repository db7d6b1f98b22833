"""``/permissions``: the role -> permission policy (read: admins and auditors; change: admins)."""

from __future__ import annotations

from typing import Annotated

from crm_platform.auth import Role, require_roles
from crm_platform.permissions import CATALOGUE, ROLES, Policy
from crm_platform.routes import CurrentActor
from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from gateway import handlers
from gateway.api.deps import HandlerDeps, active_principal

router = APIRouter(
    prefix="/permissions",
    tags=["permissions"],
    dependencies=[Depends(active_principal), require_roles(Role.ADMIN, Role.AUDITOR)],
)


class PermissionOut(BaseModel):
    name: str
    service: str
    routes: list[str] = Field(description="'METHODS pattern' of each route the permission opens")
    why: str
    default_roles: list[str]


class PolicyOut(BaseModel):
    version: int = Field(description="0: the defaults; +1 with every change")
    roles: dict[str, list[str]] = Field(description="role -> the permissions it holds")
    permissions: list[PermissionOut]


class RolePermissions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    permissions: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(
        max_length=len(CATALOGUE), description="every permission the role is to hold (replaces its list)"
    )


def policy_out(policy: Policy) -> PolicyOut:
    specs = [
        PermissionOut(
            name=spec.name,
            service=spec.service,
            routes=[f"{r.describe_methods()} {r.pattern}" for r in spec.rules],
            why=spec.why,
            default_roles=sorted(spec.default_roles),
        )
        for spec in sorted(CATALOGUE.values(), key=lambda s: s.name)
    ]
    return PolicyOut(version=policy.version, roles=policy.to_grants(), permissions=specs)


@router.get("", response_model=PolicyOut)
async def get_policy(request: Request) -> PolicyOut:
    return policy_out(await request.app.state.runtime.permissions.current())


@router.put(
    "/roles/{role}",
    response_model=PolicyOut,
    dependencies=[require_roles(Role.ADMIN)],
    responses={
        409: {"description": "would take from admin what administers permissions or accounts"},
        422: {"description": "unknown role or permission (named)"},
    },
)
async def set_role_permissions(
    role: Annotated[str, Path(max_length=64, description=f"one of {list(ROLES)}")],
    body: RolePermissions,
    actor: CurrentActor,
    deps: HandlerDeps,
) -> PolicyOut:
    """Replace what ``role`` may do; in force at the gateway at once and in every department once
    its consumer has applied the ``permissions.changed`` event."""
    return policy_out(await handlers.set_role_permissions(deps, role, body.permissions, actor))
