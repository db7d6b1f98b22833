"""Tickets: request, progress, result, SLA timers. CSAT comes from the customer's survey link
(``POST /tickets/{id}/csat-survey``); a rep can no longer type it."""

from __future__ import annotations

from typing import Annotated

from crm_platform.auth import CurrentUser
from fastapi import APIRouter, Query, status
from pydantic import BaseModel

from service_desk.api.deps import SERVICE_DESK_ROLES, Desk
from service_desk.api.models import ProgressIn, ResolveIn, TicketIn, TicketOut
from service_desk.domain.tickets import Ticket, TicketStatus
from service_desk.handlers import ServiceDesk

router = APIRouter(prefix="/tickets", tags=["tickets"], dependencies=[SERVICE_DESK_ROLES])


class TicketList(BaseModel):
    items: list[TicketOut]
    count: int


async def _out(desk: ServiceDesk, *tickets: Ticket) -> list[TicketOut]:
    config = await desk.config()
    now = desk.now()
    return [TicketOut.of(t, now, config.config.at_risk_fraction) for t in tickets]


@router.post(
    "",
    response_model=TicketOut,
    status_code=status.HTTP_201_CREATED,
    summary="Open a ticket (SLA due times from the priority's targets)",
)
async def open_ticket(body: TicketIn, desk: Desk, user: CurrentUser) -> TicketOut:
    ticket = await desk.open_ticket(
        user,
        account_id=body.account_id,
        subject=body.subject,
        request=body.request,
        priority=body.priority,
        assign_to_me=body.assign_to == "me",
    )
    return (await _out(desk, ticket))[0]


@router.get("", response_model=TicketList, summary="Tickets, newest first, with their SLA state")
async def list_tickets(
    desk: Desk,
    user: CurrentUser,
    account_id: Annotated[str | None, Query(max_length=100)] = None,
    status: TicketStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> TicketList:
    tickets = await desk.list_tickets(user, account_id=account_id, status=status, limit=limit)
    return TicketList(items=await _out(desk, *tickets), count=len(tickets))


@router.get("/{ticket_id}", response_model=TicketOut)
async def get_ticket(ticket_id: str, desk: Desk, user: CurrentUser) -> TicketOut:
    return (await _out(desk, await desk.get_ticket(user, ticket_id)))[0]


@router.post(
    "/{ticket_id}/progress",
    response_model=TicketOut,
    summary="Add a progress note (the first one is the first response)",
)
async def add_progress(ticket_id: str, body: ProgressIn, desk: Desk, user: CurrentUser) -> TicketOut:
    return (await _out(desk, await desk.add_progress(user, ticket_id, body.note)))[0]


@router.post(
    "/{ticket_id}/resolve",
    response_model=TicketOut,
    summary="Resolve with the result; records resolution time and SLA breaches",
)
async def resolve(ticket_id: str, body: ResolveIn, desk: Desk, user: CurrentUser) -> TicketOut:
    return (await _out(desk, await desk.resolve_ticket(user, ticket_id, body.result)))[0]
