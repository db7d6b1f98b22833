"""/commitment-reviews: deals sales may only win once customer success has reviewed what it promised."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from crm_contracts.events.common import Money
from crm_contracts.events.sales import Commitment
from crm_contracts.events.service_desk import CommitmentDecision
from crm_platform.routes import CurrentActor, DbDep
from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from service_desk import store
from service_desk.api.deps import CSM_LEADS, UowDep
from service_desk.api.models import Body
from service_desk.domain.reviews import CommitmentReview, ReviewStatus
from service_desk.handlers import reviews

# Customer success managers (and their leads, admins) review; service reps do not.
router = APIRouter(prefix="/commitment-reviews", tags=["commitment reviews"], dependencies=[CSM_LEADS])

ReviewId = Annotated[str, Path(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._:\-]+$")]


class VerdictIn(Body):
    decisions: list[CommitmentDecision] = Field(
        max_length=200,
        description="One per commitment of the review: approved, or flagged with a reason",
    )


class ReviewOut(BaseModel):
    review_id: str
    deal_id: str
    account_name: str
    sales_owner: str
    value: Money | None
    commitments: list[Commitment]
    reasons: list[str] = Field(description="Which threshold made sales' review required")
    requested_by: str
    requested_at: datetime
    received_at: datetime
    status: ReviewStatus
    decisions: list[CommitmentDecision]
    reviewed_by: str | None
    reviewed_at: datetime | None
    superseded_by: str | None

    @classmethod
    def of(cls, r: CommitmentReview) -> ReviewOut:
        return cls.model_validate({k: v for k, v in vars(r).items() if k != "correlation_id"})


class ReviewListOut(BaseModel):
    items: list[ReviewOut]
    count: int


@router.get("", response_model=ReviewListOut, summary="Commitment reviews, oldest first (default: pending)")
async def list_reviews(
    db: DbDep,
    status: ReviewStatus | None = ReviewStatus.PENDING,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> ReviewListOut:
    items = await store.list_reviews(db, status, limit)
    return ReviewListOut(items=[ReviewOut.of(r) for r in items], count=len(items))


@router.get("/{review_id}", response_model=ReviewOut, summary="One commitment review and its verdict")
async def get_review(review_id: ReviewId, uow: UowDep) -> ReviewOut:
    return ReviewOut.of(await reviews.get_review(uow, review_id))


@router.post(
    "/{review_id}/verdict",
    response_model=ReviewOut,
    summary="Approve or flag (with a reason) every commitment; the verdict goes back to sales",
)
async def post_verdict(review_id: ReviewId, body: VerdictIn, uow: UowDep, actor: CurrentActor) -> ReviewOut:
    return ReviewOut.of(await reviews.decide(uow, review_id, body.decisions, actor))
