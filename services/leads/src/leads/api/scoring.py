"""/scoring-rules: the rules marketing reads and changes; every change is a new version."""

from __future__ import annotations

from typing import Annotated

from crm_platform.routes import CurrentActor, DbDep, require_roles
from fastapi import APIRouter, Query

from leads import handlers
from leads import store as repo
from leads.api.deps import READERS, UowDep, can_write
from leads.api.models import RulesHistoryOut, RulesIn, RulesOut

router = APIRouter(prefix="/scoring-rules", tags=["scoring"], dependencies=[require_roles(*READERS)])


@router.get(
    "",
    response_model=RulesOut,
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
async def put_rules(body: RulesIn, uow: UowDep, actor: CurrentActor) -> RulesOut:
    new = await handlers.change_rules(
        uow,
        body.rules.to_domain(),
        body.threshold,
        actor=actor,
        note=body.note,
        expected_version=body.expected_version,
    )
    return RulesOut.of(new)


@router.get(
    "/history",
    response_model=RulesHistoryOut,
    summary="Every version of the scoring rules, newest first",
)
async def rules_history(db: DbDep, limit: Annotated[int, Query(ge=1, le=200)] = 50) -> RulesHistoryOut:
    return RulesHistoryOut(items=[RulesOut.of(r) for r in await repo.rules_history(db, limit)])
