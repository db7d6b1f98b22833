"""Which leads a user may read (issue 9, field-level rules): sales reps only those assigned to them.

Sales assigns a handed-off lead to a rep (``sales.lead_assigned``); marketing keeps the rep on
the lead (``Lead.assigned_rep``). A user whose lead-reading role is only ``sales_rep`` reads the
leads assigned to them, on every read route (list, search, get, behaviours, history, export);
marketing, marketing managers, sales managers and admins read every lead, as before. A rep who
also holds one of those roles reads what that role reads. Other roles are not limited here (an
analyst reads every lead, pseudonymised by crm_platform.field_rules).

A lead outside a rep's own answers 403 (sales' choice for records outside a rep's book, one
rule for reads and writes; ids are opaque, so nothing is enumerable).
"""

from __future__ import annotations

from crm_platform.actor import Actor
from crm_platform.errors import Forbidden

from leads.domain.leads import Lead

REP = "sales_rep"
# Roles that read every lead: a rep holding one of them too is not limited.
READ_EVERY_LEAD = frozenset({"marketing", "marketing_manager", "sales_manager", "admin"})


def rep_scope(actor: Actor) -> str | None:
    """The rep whose assigned leads are all ``actor`` may read, or None (no limit)."""
    if REP in actor.roles and not actor.has_any(READ_EVERY_LEAD):
        return actor.user_id
    return None


def can_read(lead: Lead, actor: Actor) -> bool:
    scope = rep_scope(actor)
    return scope is None or lead.assigned_rep == scope


def require_read(lead: Lead, actor: Actor) -> None:
    if not can_read(lead, actor):
        raise Forbidden("this lead is assigned to another rep; a rep reads only the leads assigned to them")
