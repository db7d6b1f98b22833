"""Loading an account or a ticket for an actor: 404 when it does not exist or is outside their book."""

from __future__ import annotations

from crm_platform.actor import Actor
from crm_platform.errors import NotFound

from service_desk.domain import access
from service_desk.domain.accounts import Account
from service_desk.domain.tickets import Ticket
from service_desk.repository import SuccessUnit


def visible(actor: Actor, account_id: str, account: Account | None) -> Account:
    """The account, or 404 when it does not exist or is outside the actor's book."""
    if account is None or not access.can_see_account(
        actor.roles, actor.user_id, account.csm, account.account_manager
    ):
        raise NotFound(f"account {account_id} not found", account_id=account_id)
    return account


async def load_account(unit: SuccessUnit, actor: Actor, account_id: str) -> Account:
    return visible(actor, account_id, await unit.accounts.get(account_id))


async def load_ticket(unit: SuccessUnit, actor: Actor, ticket_id: str) -> tuple[Ticket, Account | None]:
    """The ticket (and its account), or 404 when it does not exist or the actor may not see it."""
    ticket = await unit.tickets.get(ticket_id)
    account = await unit.accounts.get(ticket.account_id) if ticket else None
    if ticket is None or not access.can_see_ticket(
        actor.roles, actor.user_id, assignee=ticket.assignee, account_csm=account.csm if account else None
    ):
        raise NotFound(f"ticket {ticket_id} not found", ticket_id=ticket_id)
    return ticket, account
