"""/inbox: qualified leads handed over by marketing, and sales' verdict on each."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from enum import StrEnum
from typing import Annotated

from crm_contracts import utcnow
from crm_contracts.events.sales import Verdict
from crm_platform.csv_stream import Cell, csv_response
from crm_platform.errors import NotFound, RuleViolation
from crm_platform.field_rules import refuse_personal_search
from crm_platform.paging import BadCursor, search_words
from crm_platform.routes import CurrentActor, DbDep
from fastapi import APIRouter, Depends, Query
from starlette.responses import StreamingResponse

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
from sales.domain.access import is_manager, owner_scope, require_read
from sales.domain.inbox import InboxStatus

router = APIRouter(prefix="/inbox", tags=["inbox"], dependencies=[sales_only])


class InboxSort(StrEnum):
    NEWEST = "newest"
    OLDEST = "oldest"
    DUE = "due"
    SCORE = "score"


Status = Annotated[InboxStatus | None, Query()]
Overdue = Annotated[bool | None, Query(description="Pending past their response due date")]
Owner = Annotated[str | None, Query(max_length=100, description="Managers: one rep's items")]
Unassigned = Annotated[bool, Query(description="Managers: items no rep owns yet")]
Search = Annotated[
    str | None, Query(max_length=200, description="words of the company or the contact's name and email")
]
Sorting = Annotated[
    InboxSort,
    Query(
        description="newest (default), oldest, due (soonest first), score (ties: the latest changed first)"
    ),
]


def _query(
    actor: CurrentActor,
    status: Status = None,
    overdue: Overdue = None,
    owner: Owner = None,
    unassigned: Unassigned = False,
    q: Search = None,
    sort: Sorting = InboxSort.NEWEST,
) -> repo.InboxQuery:
    """The list's (and its export's) query, scoped to what the actor may see (no search by the
    contact's name and e-mail for pseudonymised users: crm_platform.field_rules)."""
    refuse_personal_search(actor.roles, {"query.q": q})
    return repo.InboxQuery(
        owner=owner_scope(actor, owner),
        status=status.value if status else None,
        overdue=overdue,
        unassigned=unassigned and is_manager(actor),
        q=search_words(q),
        sort=sort.value,
    )


QueryDep = Annotated[repo.InboxQuery, Depends(_query)]


@router.get(
    "",
    response_model=InboxPageOut,
    summary="The inbox, newest first: a rep sees their own items, managers everyone's",
)
async def list_inbox(
    db: DbDep,
    query: QueryDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[
        str | None, Query(max_length=500, description="next_cursor of the previous page")
    ] = None,
    offset: Annotated[int, Query(ge=0, le=100_000, description="ignored with a cursor")] = 0,
) -> InboxPageOut:
    now = utcnow()
    try:
        found = await repo.list_inbox(db, query, now=now, limit=limit, offset=offset, cursor=cursor)
    except BadCursor as exc:
        raise RuleViolation(f"invalid input: query.cursor: {exc}", field="query.cursor") from None
    return InboxPageOut(
        items=[InboxItemOut.of(i, now) for i in found.items],
        total=found.total,
        limit=limit,
        offset=0 if cursor else offset,
        next_cursor=found.next_cursor,
    )


EXPORT_COLUMNS = (
    "lead_id", "item_id", "status", "owner", "company", "contact_name", "contact_email", "score",
    "source_channel", "campaign", "received_at", "response_due_at", "overdue", "verdict", "reason_code",
    "decided_at",
)  # fmt: skip


@router.get(
    "/export",
    response_class=StreamingResponse,
    summary="The inbox items the list's filters select, as CSV (streamed)",
    responses={200: {"content": {"text/csv": {}}, "description": "one row per inbox item"}},
)
async def export_inbox(db: DbDep, query: QueryDep) -> StreamingResponse:
    now = utcnow()
    items = repo.export_inbox(db, query, now)

    async def rows() -> AsyncIterator[Sequence[Cell]]:
        async for i in items:
            h, v = i.handoff, i.verdict
            yield (
                i.lead_id, i.id, i.status.value, i.owner, i.company, h.contact.name, str(h.contact.email),
                h.score, h.source_channel, h.campaign, i.received_at, i.response_due_at, i.overdue(now),
                v.verdict.value if v else None, v.reason_code.value if v and v.reason_code else None,
                v.decided_at if v else None,
            )  # fmt: skip

    return csv_response("inbox.csv", EXPORT_COLUMNS, rows())


@router.get(
    "/{lead_id}",
    response_model=InboxItemOut,
    summary="The lead's current inbox item (its latest handoff)",
)
async def get_item(lead_id: LeadId, db: DbDep, actor: CurrentActor) -> InboxItemOut:
    item = await repo.get_latest_item(db, lead_id)
    if item is None:
        raise NotFound(f"lead {lead_id!r} is not in the sales inbox", lead_id=lead_id)
    require_read(actor, item.owner, "inbox item")
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
