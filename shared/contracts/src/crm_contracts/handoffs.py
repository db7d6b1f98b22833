"""The inter-department handoffs from the brief, declared once.

A consumer that stores the effect of one of these event types observes its
transport latency and emits a ``handoff.received`` receipt.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Handoff:
    name: str
    event_type: str
    from_department: str
    to_department: str
    description: str


HANDOFFS: tuple[Handoff, ...] = (
    Handoff(
        "lead-qualified",
        "lead.qualified",
        "marketing",
        "sales",
        "A qualified lead: contact, company, score and why, channel, behaviour, consent",
    ),
    Handoff(
        "lead-verdict",
        "lead.verdict",
        "sales",
        "marketing",
        "Accepted, rejected with a reason code, or recycled",
    ),
    Handoff(
        "deal-won",
        "deal.won",
        "sales",
        "customer-success",
        "Account, contacts, products, value and the commitments sales made",
    ),
    Handoff(
        "upsell-spotted",
        "upsell.spotted",
        "customer-success",
        "sales",
        "An upsell or renewal chance spotted by the service desk",
    ),
    Handoff(
        "commitment-flagged",
        "commitment.flagged",
        "customer-success",
        "sales",
        "A commitment sales made that cannot be delivered",
    ),
    Handoff(
        "action-item-to-marketing",
        "action_item.raised_for_marketing",
        "customer-success",
        "marketing",
        "Voice of the customer: an action item for marketing's queue (what, owner, due date, source)",
    ),
    Handoff(
        "action-item-to-sales",
        "action_item.raised_for_sales",
        "customer-success",
        "sales",
        "Voice of the customer: an action item for sales' queue (what, owner, due date, source)",
    ),
    Handoff(
        "action-item-outcome-from-marketing",
        "action_item.updated_by_marketing",
        "marketing",
        "customer-success",
        "What marketing did with an action item: accepted, assigned, done, declined with a reason",
    ),
    Handoff(
        "action-item-outcome-from-sales",
        "action_item.updated_by_sales",
        "sales",
        "customer-success",
        "What sales did with an action item: accepted, assigned, done, declined with a reason",
    ),
    Handoff(
        "commitment-review-requested",
        "commitment_review.requested",
        "sales",
        "customer-success",
        "A deal over the review threshold: the commitments customer success must review before the win",
    ),
    Handoff(
        "commitment-review-completed",
        "commitment_review.completed",
        "customer-success",
        "sales",
        "Customer success' verdict: each commitment approved or flagged with a reason",
    ),
    Handoff(
        "commitment-flag-outcome",
        "commitment_flag.updated_by_sales",
        "sales",
        "customer-success",
        "After the win: sales acknowledged or resolved (how) a commitment customer success flagged",
    ),
)

HANDOFF_BY_EVENT_TYPE = {h.event_type: h for h in HANDOFFS}
