"""Route dependencies every service uses: the acting user, the store, role checks.

One acting-user type (:class:`crm_platform.actor.Actor`) reaches handlers; one way
to require roles: ``APIRouter(dependencies=[require_roles(*AUDIENCE)])`` once per
router, and ``dependencies=[require_roles(...)]`` on a route only where it narrows
the router's audience.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from pymongo.asynchronous.database import AsyncDatabase

from crm_platform.actor import Actor
from crm_platform.auth import CurrentUser, Principal, require_roles
from crm_platform.mongo import Store

__all__ = [
    "CurrentActor",
    "DbDep",
    "StoreDep",
    "actor_of",
    "current_actor",
    "get_db",
    "get_store",
    "require_roles",
]


# Every dependency here is ``async``: FastAPI runs a plain ``def`` dependency in its
# thread pool, a hop per request that cost more than the dependency (docs/performance.md).
async def current_actor(principal: CurrentUser) -> Actor:
    return actor_of(principal)


def actor_of(principal: Principal) -> Actor:
    """The acting user of a verified principal (for code that already holds one)."""
    return Actor(principal.user_id, principal.username, principal.roles)


async def get_store(request: Request) -> Store:
    store: Store = request.app.state.runtime.store
    return store


async def get_db(request: Request) -> AsyncDatabase[dict[str, Any]]:
    store: Store = request.app.state.runtime.store
    return store.db


CurrentActor = Annotated[Actor, Depends(current_actor)]
StoreDep = Annotated[Store, Depends(get_store)]
DbDep = Annotated[AsyncDatabase[dict[str, Any]], Depends(get_db)]
