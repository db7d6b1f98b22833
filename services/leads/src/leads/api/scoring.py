"""/scoring-rules: the rules marketing reads and changes; every change is a new version."""

from __future__ import annotations

from typing import Annotated, Any

from crm_platform.auth import CurrentUser
from crm_platform.mongo import Store
from crm_platform.routes import get_db, get_store
from fastapi import APIRouter, Depends, Query
from pymongo.asynchronous.database import AsyncDatabase

from leads import handlers
from leads import store as repo
from leads.api.deps import actor, can_read, can_write
from leads.api.models import RulesHistoryOut, RulesIn, RulesOut

router = APIRouter(prefix="/scoring-rules", tags=["scoring"])

StoreDep = Annotated[Store, Depends(get_store)]
DbDep = Annotated[AsyncDatabase[dict[str, Any]], Depends(get_db)]


@router.get(
    "",
    response_model=RulesOut,
    dependencies=[can_read],
    summary="The current scoring rules (weights, caps, threshold, version)",
)
async def get_rules(db: DbDep) -> RulesOut:
    return RulesOut.of(await repo.current_rules(db))


@router.put(
    "",
    response_model=RulesOut,
    dependencies=[can_write],
    summary="Replace the scoring rules: stored as the next version, with who changed them",
)
async def put_rules(body: RulesIn, store: StoreDep, user: CurrentUser) -> RulesOut:
    new = await handlers.change_rules(
        store,
        body.rules.to_domain(),
        body.threshold,
        actor=actor(user),
        note=body.note,
        expected_version=body.expected_version,
    )
    return RulesOut.of(new)


@router.get(
    "/history",
    response_model=RulesHistoryOut,
    dependencies=[can_read],
    summary="Every version of the scoring rules, newest first",
)
async def rules_history(db: DbDep, limit: Annotated[int, Query(ge=1, le=200)] = 50) -> RulesHistoryOut:
    return RulesHistoryOut(items=[RulesOut.of(r) for r in await repo.rules_history(db, limit)])
