"""Tickets: request, progress, result, SLA timers (the service layer: load -> domain -> save -> emit)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from crm_platform.actor import Actor
from crm_platform.clock import now_millis
from crm_platform.custom_fields import FieldSet
from crm_platform.errors import RuleViolation

from service_desk import metrics
from service_desk.domain import access
from service_desk.domain.config import Priority
from service_desk.domain.tickets import NO_CUSTOM_FIELDS, Ticket, open_ticket
from service_desk.handlers import success
from service_desk.handlers.loading import load_ticket
from service_desk.repository import SuccessUnit, SuccessUoW


@dataclass(frozen=True)
class NewTicket:
    account_id: str
    subject: str
    request: str
    priority: Priority
    assign_to_me: bool
    custom: Mapping[str, Any] | None = None  # checked against the ticket's FieldSet
    fields: FieldSet = NO_CUSTOM_FIELDS


async def open_new_ticket(uow: SuccessUoW, new: NewTicket, actor: Actor) -> Ticket:
    """Open a case for an account the actor may see; SLA due times from the priority's targets.

    It goes to the actor when asked (or when the account has no CSM), else to the account's CSM.
    """
    ticket_id = uow.new_id()

    async def work(unit: SuccessUnit) -> Ticket:
        account = await unit.accounts.get(new.account_id)
        if account is None or not access.can_see_account(
            actor.roles, actor.user_id, account.csm, account.account_manager
        ):
            raise RuleViolation(f"unknown account {new.account_id!r}", field="account_id")
        desk = await unit.settings.desk_config()
        ticket = open_ticket(
            ticket_id=ticket_id,
            account_id=account.account_id,
            account_name=account.name,
            subject=new.subject,
            request=new.request,
            priority=new.priority,
            opened_by=actor.user_id,
            assignee=actor.user_id if new.assign_to_me or account.csm is None else account.csm,
            target=desk.config.target(new.priority),
            now=now_millis(uow.clock),
            custom=dict(new.custom or {}),
        )
        await unit.tickets.add(ticket)
        unit.emit(ticket.opened(new.fields), correlation_id=account.journey_id)
        return ticket

    ticket = await uow.run(work)
    metrics.observe_ticket_opened(ticket.priority.value)
    return ticket


async def get_ticket(uow: SuccessUoW, ticket_id: str, actor: Actor) -> Ticket:
    async def work(unit: SuccessUnit) -> Ticket:
        ticket, _ = await load_ticket(unit, actor, ticket_id)
        return ticket

    return await uow.run(work)


async def edit_custom(
    uow: SuccessUoW, ticket_id: str, fields: FieldSet, given: Mapping[str, Any], actor: Actor
) -> Ticket:
    """Set or clear (``None``) a ticket's custom field values, checked against their definitions
    (422 naming the field); audited like every change, not published (no event carries a
    ticket's details after ``ticket.opened``)."""

    async def work(unit: SuccessUnit) -> Ticket:
        ticket, _ = await load_ticket(unit, actor, ticket_id)
        ticket.custom = fields.edit(ticket.custom, given)
        await unit.tickets.save(ticket)
        return ticket

    return await uow.run(work)


async def add_progress(uow: SuccessUoW, ticket_id: str, note: str, actor: Actor) -> Ticket:
    """A progress note; the first one is the ticket's first response."""

    async def work(unit: SuccessUnit) -> Ticket:
        ticket, _ = await load_ticket(unit, actor, ticket_id)
        ticket.add_progress(note, by=actor.user_id, now=now_millis(uow.clock))
        await unit.tickets.save(ticket)
        return ticket

    return await uow.run(work)


async def resolve_ticket(uow: SuccessUoW, ticket_id: str, result: str, actor: Actor) -> Ticket:
    """Close the case with its result (``ticket.resolved``, with the SLA targets kept or breached)."""

    async def work(unit: SuccessUnit) -> Ticket:
        ticket, account = await load_ticket(unit, actor, ticket_id)
        resolved = ticket.resolve(result, by=actor.user_id, now=now_millis(uow.clock))
        await unit.tickets.save(ticket)
        unit.emit(resolved, correlation_id=account.journey_id if account else None)
        return ticket

    ticket = await uow.run(work)
    metrics.observe_ticket_resolved(
        ticket.priority.value, bool(ticket.first_response_breached), bool(ticket.resolution_breached)
    )
    await success.rescore(uow, ticket.account_id)
    return ticket
