"""Tickets: request, progress, result, SLA timers. CSAT comes from the customer's survey link
(``POST /tickets/{id}/csat-survey``); a rep can no longer type it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from enum import StrEnum
from typing import Annotated

from crm_platform import audit_api
from crm_platform.clock import now_millis
from crm_platform.csv_stream import Cell, csv_response
from crm_platform.custom_fields import FieldSet, RecordType, export_cells, export_columns, filter_of
from crm_platform.custom_fields_api import CustomFilter, fields_of
from crm_platform.field_rules import refuse_personal_search
from crm_platform.paging import BadCursor, search_words
from crm_platform.routes import CurrentActor, DbDep
from fastapi import APIRouter, Depends, Query, status
from pydantic import BaseModel, Field
from starlette.responses import StreamingResponse

from service_desk import store
from service_desk.api.accounts import bad_cursor
from service_desk.api.deps import SERVICE_DESK_ROLES, UowDep
from service_desk.api.models import ProgressIn, ResolveIn, TicketEditIn, TicketIn, TicketOut
from service_desk.domain.access import sees_all
from service_desk.domain.config import Priority
from service_desk.domain.tickets import Ticket, TicketStatus
from service_desk.handlers import accounts, tickets
from service_desk.repository import SuccessUoW

TicketFields = Annotated[FieldSet, fields_of(RecordType.TICKET)]
router = APIRouter(prefix="/tickets", tags=["tickets"], dependencies=[SERVICE_DESK_ROLES])


class TicketList(BaseModel):
    items: list[TicketOut]
    count: int
    next_cursor: str | None = Field(
        default=None, description="Pass as ?cursor= for the next page; null: the last page"
    )


class TicketSort(StrEnum):
    NEWEST = "newest"
    OLDEST = "oldest"
    DUE = "due"


AccountId = Annotated[str | None, Query(max_length=100)]
Assignee = Annotated[str | None, Query(max_length=100, description="One member's tickets")]
Search = Annotated[str | None, Query(max_length=200, description="words of the subject, request or account")]
Cursor = Annotated[str | None, Query(max_length=500, description="next_cursor of the previous page")]


def _query(
    actor: CurrentActor,
    fields: TicketFields,
    account_id: AccountId = None,
    status: TicketStatus | None = None,
    priority: Priority | None = None,
    assignee: Assignee = None,
    q: Search = None,
    sort: TicketSort = TicketSort.NEWEST,
    cf: CustomFilter = None,
) -> store.TicketQuery:
    """The list's (and its export's) query; a CSM's keeps what they may see (no search of the
    request's free text, nor text custom fields, for pseudonymised users: crm_platform.field_rules)."""
    refuse_personal_search(actor.roles, {"query.q": q})
    return store.TicketQuery(
        account_id=account_id,
        status=status.value if status else None,
        priority=priority.value if priority else None,
        assignee=assignee,
        visible_to=None if sees_all(actor.roles) else actor.user_id,
        q=search_words(q),
        sort=sort.value,
        custom=filter_of(fields, cf, roles=actor.roles),
    )


QueryDep = Annotated[store.TicketQuery, Depends(_query)]


async def _out(uow: SuccessUoW, *found: Ticket) -> list[TicketOut]:
    """The tickets with their SLA state now (the configured at-risk fraction)."""
    record = await accounts.desk_config(uow)
    now = now_millis(uow.clock)
    return [TicketOut.of(t, now, record.config.at_risk_fraction) for t in found]


@router.post(
    "",
    response_model=TicketOut,
    status_code=status.HTTP_201_CREATED,
    summary="Open a ticket (SLA due times from the priority's targets)",
)
async def open_ticket(body: TicketIn, uow: UowDep, actor: CurrentActor, fields: TicketFields) -> TicketOut:
    new = tickets.NewTicket(
        account_id=body.account_id,
        subject=body.subject,
        request=body.request,
        priority=body.priority,
        assign_to_me=body.assign_to == "me",
        custom=fields.create(body.custom),
        fields=fields,
    )
    return (await _out(uow, await tickets.open_new_ticket(uow, new, actor)))[0]


@router.get("", response_model=TicketList, summary="Tickets, newest first, with their SLA state")
async def list_tickets(
    db: DbDep,
    uow: UowDep,
    query: QueryDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Cursor = None,
) -> TicketList:
    try:
        found, next_cursor = await store.list_tickets(db, query, limit=limit, cursor=cursor)
    except BadCursor as exc:
        raise bad_cursor(exc) from None
    return TicketList(items=await _out(uow, *found), count=len(found), next_cursor=next_cursor)


EXPORT_COLUMNS = (
    "id", "account_id", "account_name", "subject", "priority", "status", "assignee", "opened_by",
    "opened_at", "first_response_due_at", "first_response_at", "resolution_due_at", "resolved_at",
    "first_response_breached", "resolution_breached", "csat",
)  # fmt: skip


@router.get(
    "/export",
    response_class=StreamingResponse,
    summary="The tickets the list's filters select, as CSV (streamed)",
    responses={200: {"content": {"text/csv": {}}, "description": "one row per ticket"}},
)
async def export_tickets(db: DbDep, query: QueryDep, fields: TicketFields) -> StreamingResponse:

    async def rows() -> AsyncIterator[Sequence[Cell]]:
        async for t in store.export_tickets(db, query):
            yield (
                t.ticket_id, t.account_id, t.account_name, t.subject, t.priority.value, t.status.value,
                t.assignee, t.opened_by, t.opened_at, t.first_response_due_at, t.first_response_at,
                t.resolution_due_at, t.resolved_at, t.first_response_breached, t.resolution_breached, t.csat,
                *export_cells(fields, t.custom),
            )  # fmt: skip

    return csv_response("tickets.csv", EXPORT_COLUMNS + export_columns(fields), rows())


@router.get("/{ticket_id}", response_model=TicketOut)
async def get_ticket(ticket_id: str, uow: UowDep, actor: CurrentActor) -> TicketOut:
    return (await _out(uow, await tickets.get_ticket(uow, ticket_id, actor)))[0]


@router.patch(
    "/{ticket_id}",
    response_model=TicketOut,
    summary="Set or clear (null) a ticket's custom field values; 422 names the field",
)
async def edit_ticket(
    ticket_id: str, body: TicketEditIn, uow: UowDep, actor: CurrentActor, fields: TicketFields
) -> TicketOut:
    return (await _out(uow, await tickets.edit_custom(uow, ticket_id, fields, body.custom or {}, actor)))[0]


@router.post(
    "/{ticket_id}/progress",
    response_model=TicketOut,
    summary="Add a progress note (the first one is the first response)",
)
async def add_progress(ticket_id: str, body: ProgressIn, uow: UowDep, actor: CurrentActor) -> TicketOut:
    return (await _out(uow, await tickets.add_progress(uow, ticket_id, body.note, actor)))[0]


@router.post(
    "/{ticket_id}/resolve",
    response_model=TicketOut,
    summary="Resolve with the result; records resolution time and SLA breaches",
)
async def resolve(ticket_id: str, body: ResolveIn, uow: UowDep, actor: CurrentActor) -> TicketOut:
    return (await _out(uow, await tickets.resolve_ticket(uow, ticket_id, body.result, actor)))[0]


@router.get(
    "/{ticket_id}/history",
    response_model=audit_api.AuditPageOut,
    summary="The ticket's changes, newest first: who, when, each field before and after",
)
async def ticket_history(
    ticket_id: str,
    uow: UowDep,
    db: DbDep,
    actor: CurrentActor,
    limit: audit_api.Limit = 50,
    cursor: audit_api.Cursor = None,
) -> audit_api.AuditPageOut:
    await tickets.get_ticket(uow, ticket_id, actor)  # 404, or 403 outside the actor's book
    return await audit_api.history_out(db, store.TICKETS, ticket_id, limit, cursor)
