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
)

HANDOFF_BY_EVENT_TYPE = {h.event_type: h for h in HANDOFFS}
