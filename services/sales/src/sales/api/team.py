"""/reps, /config and /pipeline: the team and the rules sales managers set."""

from __future__ import annotations

from typing import Annotated

from crm_platform.routes import CurrentActor, DbDep
from fastapi import APIRouter, Path

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
