"""/reps, /config and /pipeline: the team and the rules sales managers set."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from crm_contracts import utcnow
from crm_platform.routes import CurrentActor, DbDep
from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from sales import handlers
from sales import store as repo
from sales.api.deps import UowDep, forecast_readers, managers_only, sales_only
from sales.api.models import (
    ConfigIn,
    ConfigOut,
    PipelineIn,
    PipelineOut,
    RepActiveIn,
    RepOut,
    ReviewPolicyIn,
    ReviewPolicyOut,
    RosterIn,
    RosterOut,
)
from sales.domain.pipeline import Stage
from sales.domain.response_times import RepResponseTimes, per_rep
from sales.domain.review import ReviewPolicy

# Its widest audience once (the pipeline is read by analysts too); each route narrows it.
router = APIRouter(tags=["team"], dependencies=[forecast_readers])

UserIdPath = Annotated[
    str,
    Path(
        pattern=r"^[A-Za-z0-9._@\-]{1,100}$",
        description="The rep's user id (the token's sub), as listed by the gateway's GET /users",
    ),
]


async def _roster(db: DbDep) -> RosterOut:
    return RosterOut.of(await repo.list_reps(db), await repo.peek_turn(db))


@router.get(
    "/reps",
    response_model=RosterOut,
    dependencies=[sales_only],
    summary="The rep roster, and the round-robin rotation of the active reps",
)
async def get_reps(db: DbDep) -> RosterOut:
    return await _roster(db)


@router.put(
    "/reps",
    response_model=RosterOut,
    dependencies=[managers_only],
    summary="Replace the roster (reps not listed leave it; their records stay theirs)",
)
async def put_reps(body: RosterIn, uow: UowDep, db: DbDep, actor: CurrentActor) -> RosterOut:
    await handlers.replace_roster(uow, [(r.user_id, r.name, r.active) for r in body.reps], actor)
    return await _roster(db)


class RepResponseTimesOut(BaseModel):
    owner: str = Field(description="The rep's user id; empty for items no rep holds")
    answered: int = Field(description="Items reached in the window and accepted, rejected or recycled")
    p50_seconds: float | None = Field(description="Reached -> answered, median (nearest rank)")
    p90_seconds: float | None = Field(description="Reached -> answered, 90th percentile (nearest rank)")
    within_sla: int = Field(description="Answered by the item's response due time")
    pending: int = Field(description="Items waiting for the rep now (whenever they arrived)")
    pending_overdue: int = Field(description="Waiting items past their response due time")
    oldest_pending_seconds: float | None

    @classmethod
    def of(cls, r: RepResponseTimes) -> RepResponseTimesOut:
        return cls.model_validate(r, from_attributes=True)


class ResponseTimesOut(BaseModel):
    days: int
    reps: list[RepResponseTimesOut] = Field(description="Slowest median first")
    truncated: bool = Field(description="True when the window held more items than one answer reads")


@router.get(
    "/reps/response-times",
    response_model=ResponseTimesOut,
    dependencies=[managers_only],
    summary="Per rep: time from a lead reaching their inbox to accept or reject (p50, p90), and what waits",
)
async def response_times(
    db: DbDep, days: Annotated[int, Query(ge=1, le=90, description="The window: items reached in it")] = 30
) -> ResponseTimesOut:
    """A reassigned item's clock starts at its reassignment; waiting items count whenever they
    arrived. At most ``RESPONSE_TIMES_MAX_ITEMS`` items are read (newest first)."""
    now = utcnow()
    answers = await repo.response_answers(db, now - timedelta(days=days))
    return ResponseTimesOut(
        days=days,
        reps=[RepResponseTimesOut.of(r) for r in per_rep(answers, now)],
        truncated=len(answers) >= repo.RESPONSE_TIMES_MAX_ITEMS,
    )


@router.put(
    "/reps/{user_id}",
    response_model=RepOut,
    dependencies=[managers_only],
    summary="Add one rep or switch them active/inactive",
)
async def put_rep(user_id: UserIdPath, body: RepActiveIn, uow: UowDep, actor: CurrentActor) -> RepOut:
    return RepOut.of(await handlers.set_rep(uow, user_id, body.name, body.active, actor))


@router.get(
    "/config",
    response_model=ConfigOut,
    dependencies=[sales_only],
    summary="Sales settings: the lead response SLA and when a deal needs a commitment review",
)
async def get_config(db: DbDep) -> ConfigOut:
    doc = await repo.get_config(db)
    return ConfigOut(
        lead_response_sla_minutes=doc["lead_response_sla_minutes"],
        commitment_review=ReviewPolicyOut.of(repo.review_policy_from_doc(doc.get("commitment_review"))),
        updated_at=doc.get("updated_at"),
        updated_by=doc.get("updated_by"),
    )


@router.put(
    "/config",
    response_model=ConfigOut,
    dependencies=[managers_only],
    summary="Set the lead response SLA (applies to leads received from now on)",
)
async def put_config(body: ConfigIn, uow: UowDep, db: DbDep, actor: CurrentActor) -> ConfigOut:
    await handlers.set_sla(uow, body.lead_response_sla_minutes, actor)
    return await get_config(db)


@router.put(
    "/config/commitment-review",
    response_model=ConfigOut,
    dependencies=[managers_only],
    summary="Set when a deal needs customer success' commitment review before it can be won",
)
async def put_review_policy(body: ReviewPolicyIn, uow: UowDep, db: DbDep, actor: CurrentActor) -> ConfigOut:
    policy = ReviewPolicy(body.value_threshold, body.commitment_threshold)
    await handlers.set_review_policy(uow, policy, actor)
    return await get_config(db)


async def _pipeline(db: DbDep) -> PipelineOut:
    doc = await repo.get_pipeline_doc(db)
    return PipelineOut.of(repo.pipeline_from_doc(doc), doc)


@router.get(
    "/pipeline",
    response_model=PipelineOut,
    dependencies=[forecast_readers],
    summary="The pipeline: ordered stages, required fields, win probabilities",
)
async def get_pipeline(db: DbDep) -> PipelineOut:
    return await _pipeline(db)


@router.put(
    "/pipeline",
    response_model=PipelineOut,
    dependencies=[managers_only],
    summary="Replace the pipeline (a new version; stages holding opportunities stay)",
)
async def put_pipeline(body: PipelineIn, uow: UowDep, db: DbDep, actor: CurrentActor) -> PipelineOut:
    stages = [Stage(s.name, s.probability, tuple(s.required_fields)) for s in body.stages]
    await handlers.replace_pipeline(uow, stages, actor)
    return await _pipeline(db)
