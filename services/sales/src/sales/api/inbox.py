"""/inbox: qualified leads handed over by marketing, and sales' verdict on each."""

from __future__ import annotations

from typing import Annotated

from crm_contracts import utcnow
from crm_contracts.events.sales import Verdict
from crm_platform.errors import NotFound
from crm_platform.routes import CurrentActor, DbDep
from fastapi import APIRouter, Query

from sales import handlers
from sales import store as repo
from sales.api.deps import LeadId, UowDep, managers_only, sales_only
from sales.api.models import (
    AcceptIn,
    AssignIn,
    DecisionOut,
    InboxItemOut,
    InboxPageOut,
    OpportunityOut,
    RecycleIn,
    RejectIn,
)
from sales.domain.access import is_manager, owner_scope, require_access
from sales.domain.inbox import InboxStatus

router = APIRouter(prefix="/inbox", tags=["inbox"], dependencies=[sales_only])


@router.get(
    "",
    response_model=InboxPageOut,
    summary="The inbox, newest first: a rep sees their own items, managers everyone's",
)
async def list_inbox(
    db: DbDep,
    actor: CurrentActor,
    status: Annotated[InboxStatus | None, Query()] = None,
    overdue: Annotated[bool | None, Query(description="Pending past their response due date")] = None,
    owner: Annotated[str | None, Query(max_length=100, description="Managers: one rep's items")] = None,
    unassigned: Annotated[bool, Query(description="Managers: items no rep owns yet")] = False,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
) -> InboxPageOut:
    now = utcnow()
    items, total = await repo.list_inbox(
        db,
        owner=owner_scope(actor, owner),
        status=status.value if status else None,
        overdue=overdue,
        unassigned=unassigned and is_manager(actor),
        now=now,
        limit=limit,
        offset=offset,
    )
    return InboxPageOut(
        items=[InboxItemOut.of(i, now) for i in items], total=total, limit=limit, offset=offset
    )


@router.get(
    "/{lead_id}",
    response_model=InboxItemOut,
    summary="The lead's current inbox item (its latest handoff)",
)
async def get_item(lead_id: LeadId, db: DbDep, actor: CurrentActor) -> InboxItemOut:
    item = await repo.get_latest_item(db, lead_id)
    if item is None:
        raise NotFound(f"lead {lead_id!r} is not in the sales inbox", lead_id=lead_id)
    require_access(actor, item.owner, "inbox item")
    return InboxItemOut.of(item)


@router.post(
    "/{lead_id}/assign",
    response_model=InboxItemOut,
    dependencies=[managers_only],
    summary="Assign a pending item to a rep (or the next in the rotation)",
)
async def assign(
    lead_id: LeadId, uow: UowDep, actor: CurrentActor, body: AssignIn | None = None
) -> InboxItemOut:
    owner = body.owner if body is not None else None
    return InboxItemOut.of(await handlers.assign(uow, lead_id, owner, actor))


def _decision(result: handlers.VerdictResult) -> DecisionOut:
    return DecisionOut(
        item=InboxItemOut.of(result.item),
        opportunity=OpportunityOut.of(result.opportunity) if result.opportunity else None,
    )


@router.post(
    "/{lead_id}/accept",
    response_model=DecisionOut,
    summary="Accept the lead: an opportunity opens in the first pipeline stage",
)
async def accept(
    lead_id: LeadId, uow: UowDep, actor: CurrentActor, body: AcceptIn | None = None
) -> DecisionOut:
    note = body.note if body is not None else None
    return _decision(await handlers.decide(uow, lead_id, Verdict.ACCEPTED, actor, note=note))


@router.post(
    "/{lead_id}/reject",
    response_model=DecisionOut,
    summary="Reject the lead with a reason code (required)",
)
async def reject(lead_id: LeadId, body: RejectIn, uow: UowDep, actor: CurrentActor) -> DecisionOut:
    return _decision(
        await handlers.decide(
            uow, lead_id, Verdict.REJECTED, actor, reason_code=body.reason_code, note=body.note
        )
    )


@router.post(
    "/{lead_id}/recycle",
    response_model=DecisionOut,
    summary="Send the lead back to marketing's nurturing",
)
async def recycle(
    lead_id: LeadId, uow: UowDep, actor: CurrentActor, body: RecycleIn | None = None
) -> DecisionOut:
    return _decision(
        await handlers.decide(
            uow,
            lead_id,
            Verdict.RECYCLED,
            actor,
            reason_code=body.reason_code if body else None,
            note=body.note if body else None,
        )
    )
