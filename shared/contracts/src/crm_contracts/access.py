"""Who may read and write which topic, declared once.

The services subscribe to exactly :data:`CONSUMES` (their consumers take their topics
from here) and the Strimzi ``KafkaUser`` ACLs are generated from it and the topic
table (``scripts/gen_k8s_topics.py``): each department may write only the topics it
owns, its dead-letter topic and, when it receives handoffs, the receipts topic; it may
read only what it consumes (and, when it sends handoffs, their receipts), in its own
consumer groups (the service name, or names starting with it, e.g. ``sales.handoff-receipts``).
"""

from __future__ import annotations

from crm_contracts.handoffs import HANDOFF_BY_EVENT_TYPE
from crm_contracts.registry import ALL_EVENTS
from crm_contracts.topics import (
    ACCOUNT_SIGNAL,
    ACTION_ITEMS,
    COMMITMENT_REVIEWS,
    DEAL_WON,
    ERASURE_CONFIRMATIONS,
    GATEWAY_ERASURE_REQUESTS,
    GATEWAY_PERMISSIONS,
    HANDOFF_RECEIPTS,
    LEAD_QUALIFIED,
    LEAD_VERDICT,
    LEADS_ACTION_ITEM_UPDATES,
    LEADS_EVENTS,
    LEADS_PERSON_KEYS,
    SALES_ACTION_ITEM_UPDATES,
    SALES_EVENTS,
    SALES_PERSON_KEYS,
    SERVICE_DESK_EVENTS,
    TOPICS,
    dead_letter_topic,
)

# service name -> the topics its consumer subscribes to
# (every department reads the role -> permission policy and the erasure requests the gateway
# publishes, issue 9)
CONSUMES: dict[str, tuple[str, ...]] = {
    # sales' events: which rep a lead was assigned to (sales.lead_assigned: reps read only theirs)
    "leads": (LEAD_VERDICT, SALES_EVENTS, ACTION_ITEMS, GATEWAY_PERMISSIONS, GATEWAY_ERASURE_REQUESTS),
    "sales": (LEAD_QUALIFIED, ACCOUNT_SIGNAL, ACTION_ITEMS, GATEWAY_PERMISSIONS, GATEWAY_ERASURE_REQUESTS),
    "service-desk": (
        DEAL_WON,
        SALES_ACTION_ITEM_UPDATES,
        LEADS_ACTION_ITEM_UPDATES,
        COMMITMENT_REVIEWS,
        GATEWAY_PERMISSIONS,
        GATEWAY_ERASURE_REQUESTS,
    ),
    # the faust worker: every department's events and the receivers' receipts
    "analytics": (
        LEADS_EVENTS,
        LEAD_QUALIFIED,
        LEAD_VERDICT,
        SALES_EVENTS,
        DEAL_WON,
        SERVICE_DESK_EVENTS,
        ACCOUNT_SIGNAL,
        ACTION_ITEMS,
        SALES_ACTION_ITEM_UPDATES,
        LEADS_ACTION_ITEM_UPDATES,
        COMMITMENT_REVIEWS,
        HANDOFF_RECEIPTS,
        GATEWAY_PERMISSIONS,
        GATEWAY_ERASURE_REQUESTS,
    ),
    # the gateway publishes the permission policy and erasure requests, and folds the
    # departments' confirmations of those requests
    "gateway": (ERASURE_CONFIRMATIONS,),
}

# service name -> the key topics it reads (issue 9, crypto-shredding: crm_platform.shredding),
# each with a consumer of its own (group ``<service>.person-keys``), so that an event waiting for
# its key never holds up the key it waits for. Analytics needs no personal data: it reads none.
PERSON_KEYS: dict[str, tuple[str, ...]] = {
    "sales": (LEADS_PERSON_KEYS,),  # to open lead.qualified v2
    "service-desk": (SALES_PERSON_KEYS,),  # to open deal.won v3
}

_HANDOFF_TOPICS = frozenset(e.topic for e in ALL_EVENTS if e.event_type in HANDOFF_BY_EVENT_TYPE)


def receives_handoffs(service: str) -> bool:
    """A receiver of handoffs writes a ``handoff.received`` receipt for each (analytics only reads)."""
    return service != "analytics" and any(t in _HANDOFF_TOPICS for t in CONSUMES.get(service, ()))


def sends_handoffs(service: str) -> bool:
    """A sender of handoffs reads the receipts, to re-send the handoffs nobody receipted."""
    return any(t.owner == service and t.name in _HANDOFF_TOPICS for t in TOPICS)


def reads(service: str) -> tuple[str, ...]:
    """The topics ``service`` may read: what it consumes, the key topics it holds keys from, plus
    the receipts if it sends handoffs."""
    topics = [*CONSUMES.get(service, ()), *PERSON_KEYS.get(service, ())]
    if sends_handoffs(service) and HANDOFF_RECEIPTS not in topics:
        topics.append(HANDOFF_RECEIPTS)
    return tuple(topics)


def produces(service: str) -> tuple[str, ...]:
    """The topics ``service`` may write: those it owns or is named a producer of (its DLQ included),
    receipts if it receives."""
    owned = [t.name for t in TOPICS if t.owner == service or service in t.producers]
    dlq = dead_letter_topic(service)
    if dlq not in owned:
        owned.append(dlq)
    if receives_handoffs(service) and HANDOFF_RECEIPTS not in owned:
        owned.append(HANDOFF_RECEIPTS)
    return tuple(sorted(owned))
