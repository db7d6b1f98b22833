"""Admin-only user management: ``/users``."""

from __future__ import annotations

from typing import Annotated

from crm_platform.auth import Role, require_roles
from crm_platform.routes import CurrentActor, DbDep
from fastapi import APIRouter, Depends, Query, status

from gateway import handlers, store
from gateway.api.deps import HandlerDeps, active_principal
from gateway.api.models import CreateUser, UpdateUser, UserList, UserOut
from gateway.handlers import UserChanges

router = APIRouter(
    prefix="/users",
    tags=["users"],
    dependencies=[Depends(active_principal), require_roles(Role.ADMIN)],
    responses={401: {"description": "no valid token"}, 403: {"description": "not an admin"}},
)


@router.post(
    "",
    response_model=UserOut,
    status_code=status.HTTP_201_CREATED,
    responses={
        409: {"description": "username taken (case-insensitive)"},
        422: {"description": "password or username policy"},
    },
)
async def create_user(body: CreateUser, deps: HandlerDeps) -> UserOut:
    user = await handlers.create_user(
        deps, body.username, body.password.get_secret_value(), body.roles, body.display_name
    )
    return UserOut.of(user)


@router.get("", response_model=UserList)
async def list_users(
    db: DbDep,
    active: Annotated[bool | None, Query(description="only active (true) or inactive (false)")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> UserList:
    users, total = await store.list_users(db, active=active, limit=limit, offset=offset)
    return UserList(items=[UserOut.of(u) for u in users], total=total)


@router.get("/{user_id}", response_model=UserOut, responses={404: {"description": "no such user"}})
async def get_user(user_id: str, deps: HandlerDeps) -> UserOut:
    return UserOut.of(await handlers.get_user(deps, user_id))


@router.patch(
    "/{user_id}",
    response_model=UserOut,
    responses={
        404: {"description": "no such user"},
        409: {"description": "would leave no active administrator"},
    },
)
async def update_user(user_id: str, body: UpdateUser, actor: CurrentActor, deps: HandlerDeps) -> UserOut:
    changes = UserChanges(
        roles=body.roles,
        active=body.active,
        display_name=body.display_name,
        password=body.password.get_secret_value() if body.password is not None else None,
    )
    return UserOut.of(await handlers.update_user(deps, user_id, changes, actor))
