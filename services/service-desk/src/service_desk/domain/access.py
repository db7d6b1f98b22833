"""Who sees which records: a CSM sees the accounts they manage; reps and admins see all."""

from __future__ import annotations

from collections.abc import Iterable

from crm_platform.actor import Actor
from crm_platform.auth import Role
from crm_platform.field_rules import applies_to

SEE_ALL = frozenset({Role.SERVICE_REP, Role.SERVICE_LEAD, Role.ADMIN})
ROSTER_EDITORS = frozenset({Role.CUSTOMER_SUCCESS_MANAGER, Role.SERVICE_LEAD, Role.ADMIN})
CONFIG_EDITORS = frozenset({Role.ADMIN})


def sees_all(roles: Iterable[str]) -> bool:
    """Reps, leads and admins; and analysts and executives (only those: crm_platform.field_rules),
    who hold no service-desk route by default: one an administrator grants them shows every
    record, with personal data pseudonymised. An analyst who is also a CSM is a CSM here."""
    held = set(roles)
    return bool(SEE_ALL & held) or applies_to(held)


def can_see_account(
    roles: Iterable[str], user_id: str, account_csm: str | None, account_manager: str | None = None
) -> bool:
    """Reps and admins see every account; a CSM the ones they manage (as CSM or account manager)."""
    return sees_all(roles) or user_id in {account_csm, account_manager} - {None}


def can_see_ticket(roles: Iterable[str], user_id: str, *, assignee: str, account_csm: str | None) -> bool:
    """A CSM sees the tickets of their accounts and the tickets assigned to them."""
    return sees_all(roles) or assignee == user_id or account_csm == user_id


def book_of(actor: Actor, member: str | None) -> tuple[bool, str | None]:
    """(may see anything, whose accounts) for a listing asked for ``member``'s accounts (None:
    everyone's): a CSM sees only their own; reps and admins anyone's."""
    if sees_all(actor.roles):
        return True, member
    return member is None or member == actor.user_id, actor.user_id
