"""Sales' own Prometheus metrics (``crm_sales_`` prefix), observed after commit."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter, Histogram

if TYPE_CHECKING:
    from sales.domain.inbox import InboxItem

# Lead response is minutes to days: the buckets follow the SLA conversation.
RESPONSE_BUCKETS = (60, 300, 900, 1800, 3600, 2 * 3600, 4 * 3600, 8 * 3600, 24 * 3600, 72 * 3600, 7 * 86400)

LEAD_VERDICTS = Counter(
    "crm_sales_lead_verdicts",
    "Verdicts given on qualified leads",
    ["verdict", "within_sla"],
)
LEAD_RESPONSE_SECONDS = Histogram(
    "crm_sales_lead_response_seconds",
    "Qualified lead received by sales -> verdict (the first human action)",
    ["verdict"],
    buckets=RESPONSE_BUCKETS,
)
STAGE_MOVES = Counter(
    "crm_sales_stage_moves",
    "Opportunity stage moves, by target stage",
    ["to_stage"],
)


def observe_verdict(item: InboxItem) -> None:
    """A verdict was committed: count it (within the SLA or not) and how long the lead waited."""
    if item.verdict is None:
        return
    verdict, decided_at = item.verdict.verdict.value, item.verdict.decided_at
    LEAD_VERDICTS.labels(verdict, str(decided_at <= item.response_due_at).lower()).inc()
    LEAD_RESPONSE_SECONDS.labels(verdict).observe(max(0.0, (decided_at - item.received_at).total_seconds()))


def observe_stage_move(target: str) -> None:
    STAGE_MOVES.labels(target).inc()


CONTACT_IMPORT_ROWS = Counter(
    "crm_sales_contact_import_rows",
    "Rows of contact imports committed, by outcome",
    ["outcome"],
)


def observe_contact_import(accepted: int, rejected: int) -> None:
    """One batch of a contact import committed."""
    CONTACT_IMPORT_ROWS.labels("accepted").inc(accepted)
    CONTACT_IMPORT_ROWS.labels("rejected").inc(rejected)
