"""/scoring-rules: the rules marketing reads and changes; every change is a new version."""

from __future__ import annotations

from typing import Annotated

from crm_platform.errors import RuleViolation
from crm_platform.routes import CurrentActor, DbDep, require_roles
from fastapi import APIRouter, Query

from leads import handlers
from leads import store as repo
from leads.api.deps import READERS, UowDep, can_write
from leads.api.models import RulesHistoryOut, RulesIn, RulesOut, RulesPreviewIn, RulesPreviewOut
from leads.domain.scoring import InvalidRules, ScoringRules, preview, validate_rules

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


@router.post(
    "/preview",
    response_model=RulesPreviewOut,
    dependencies=[can_write],
    summary="How many leads a draft of the rules would qualify, before saving it (nothing is stored)",
)
async def preview_rules(body: RulesPreviewIn, db: DbDep) -> RulesPreviewOut:
    """Scores the current cycle of every lead a score can still qualify (new, nurturing,
    recycled) with the current rules and with the draft, by the same pure ``score`` a behaviour
    uses. Bounded work: at most ``PREVIEW_MAX_LEADS`` leads (20,000, newest first; ``truncated``
    says when there were more), one field each, scored in memory; nothing is written."""
    rules = body.rules.to_domain()
    try:
        validate_rules(rules, body.threshold)
    except InvalidRules as exc:
        raise RuleViolation(f"invalid scoring rules: {exc}", field=exc.field) from None
    current = await repo.current_rules(db)
    cycles = [counts async for counts in repo.open_cycles(db)]
    draft = ScoringRules(rules, body.threshold, version=current.version + 1)
    result = preview(cycles, current, draft)
    return RulesPreviewOut(
        current_version=current.version,
        leads=result.leads,
        qualify_current=result.qualify_current,
        qualify_draft=result.qualify_draft,
        newly=result.newly,
        no_longer=result.no_longer,
        truncated=len(cycles) >= repo.PREVIEW_MAX_LEADS,
    )
