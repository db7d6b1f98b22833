"""The topic table: every topic the platform uses, declared once.

Provisioning (``crm_platform.topics``) creates missing topics from this table and
reports mismatches on existing ones; nothing else creates topics.

The table is also the source of truth for who may publish where: a record whose
envelope ``source`` is not one of its topic's :meth:`TopicSpec.sources` (the owner,
unless ``producers`` says otherwise), or whose ``event_type`` is declared for another
topic, is dead-lettered as ``wrong_source``
(:func:`crm_contracts.registry.wrong_source`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

DAY_MS = 24 * 60 * 60 * 1000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    owner: str
    description: str
    partitions: int = 6
    replication_factor: int = 3
    retention_ms: int = 30 * DAY_MS
    cleanup_policy: str = "delete"
    configs: dict[str, str] = field(default_factory=dict)
    producers: tuple[str, ...] = ()  # services that may publish, when not only the owner

    def sources(self) -> frozenset[str]:
        """The envelope ``source`` values allowed on this topic."""
        return frozenset(self.producers or (self.owner,))

    def topic_configs(self) -> dict[str, str]:
        return {
            "retention.ms": str(self.retention_ms),
            "cleanup.policy": self.cleanup_policy,
            **self.configs,
        }


# Handoff topics (between departments)
LEAD_QUALIFIED = "crm.leads.lead-qualified"
LEAD_VERDICT = "crm.sales.lead-verdict"
DEAL_WON = "crm.sales.deal-won"
ACCOUNT_SIGNAL = "crm.service-desk.account-signal"
# Commitment reviews sales requests before a deal can be won (verdicts: ACCOUNT_SIGNAL)
COMMITMENT_REVIEWS = "crm.sales.commitment-reviews"
# Voice-of-the-customer action items (crm_contracts.events.action_items)
ACTION_ITEMS = "crm.service-desk.action-items"
SALES_ACTION_ITEM_UPDATES = "crm.sales.action-item-updates"
LEADS_ACTION_ITEM_UPDATES = "crm.leads.action-item-updates"
# Domain events each department emits for analytics
LEADS_EVENTS = "crm.leads.events"
SALES_EVENTS = "crm.sales.events"
SERVICE_DESK_EVENTS = "crm.service-desk.events"
# Receivers' receipts of handoffs (transport latency, for analytics)
HANDOFF_RECEIPTS = "crm.platform.handoff-receipts"
# The role -> permission policy an administrator edits at the gateway (issue 9)
GATEWAY_PERMISSIONS = "crm.gateway.permissions"
# Erasure requests the gateway files, and each department's confirmation (issue 9)
GATEWAY_ERASURE_REQUESTS = "crm.gateway.erasure-requests"
ERASURE_CONFIRMATIONS = "crm.platform.erasure-confirmations"
# Per-person data keys (issue 9, crypto-shredding): each owner's compacted key topic
LEADS_PERSON_KEYS = "crm.leads.person-keys"
SALES_PERSON_KEYS = "crm.sales.person-keys"


def dead_letter_topic(service: str) -> str:
    return f"crm.dlq.{service}"


_YEAR = 365 * DAY_MS
HOUR_MS = 60 * 60 * 1000

# A key topic keeps the latest record per person only: a shredded key leaves the closed
# segments soon (hourly segments, a low dirty ratio, no compaction lag), and the shredding
# record stays a day past compaction for consumers that are behind (docs/governance.md, 3).
PERSON_KEY_TOPIC_CONFIGS = {
    "segment.ms": str(HOUR_MS),
    "min.cleanable.dirty.ratio": "0.1",
    "delete.retention.ms": str(DAY_MS),
    "min.compaction.lag.ms": "0",
}

TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(LEAD_QUALIFIED, "leads", "Qualified leads handed to sales", retention_ms=_YEAR),
    TopicSpec(LEAD_VERDICT, "sales", "Sales' verdict on a qualified lead", retention_ms=_YEAR),
    TopicSpec(DEAL_WON, "sales", "Won deals handed to customer success", retention_ms=_YEAR),
    TopicSpec(
        ACCOUNT_SIGNAL,
        "service-desk",
        "Upsell/renewal chances, over-promise flags and commitment review verdicts",
        retention_ms=_YEAR,
    ),
    TopicSpec(
        COMMITMENT_REVIEWS,
        "sales",
        "Commitment reviews sales asks customer success for before a deal is won, and (after the win) "
        "what sales did with a commitment customer success flagged",
        retention_ms=_YEAR,
    ),
    TopicSpec(
        ACTION_ITEMS,
        "service-desk",
        "Action items raised by customer success for a department's queue",
        retention_ms=_YEAR,
    ),
    TopicSpec(SALES_ACTION_ITEM_UPDATES, "sales", "What sales did with an action item", retention_ms=_YEAR),
    TopicSpec(
        LEADS_ACTION_ITEM_UPDATES, "leads", "What marketing did with an action item", retention_ms=_YEAR
    ),
    TopicSpec(LEADS_EVENTS, "leads", "Marketing domain events", retention_ms=_YEAR),
    TopicSpec(SALES_EVENTS, "sales", "Sales domain events", retention_ms=_YEAR),
    TopicSpec(SERVICE_DESK_EVENTS, "service-desk", "Service desk domain events", retention_ms=_YEAR),
    TopicSpec(
        HANDOFF_RECEIPTS,
        "platform",
        "Receiver-side receipts of every handoff",
        # The platform library emits a receipt in whichever service received a handoff.
        producers=("leads", "sales", "service-desk"),
    ),
    TopicSpec(
        GATEWAY_PERMISSIONS,
        "gateway",
        "The role -> permission policy, a full snapshot per change (compacted: the latest is kept)",
        partitions=1,
        retention_ms=_YEAR,
        cleanup_policy="compact",
    ),
    TopicSpec(
        GATEWAY_ERASURE_REQUESTS,
        "gateway",
        "Erasure requests: a request id and the keyed hash of the person's e-mail, never the e-mail",
        partitions=1,
        retention_ms=_YEAR,
    ),
    TopicSpec(
        ERASURE_CONFIRMATIONS,
        "platform",
        "Each department's confirmation that it erased the person of an erasure request",
        partitions=1,
        retention_ms=_YEAR,
        # Every department confirms its own erasure; the gateway folds the confirmations.
        producers=("leads", "sales", "service-desk", "analytics"),
    ),
    *(
        TopicSpec(
            name,
            owner,
            f"The per-person data keys {owner} makes (key = person id; the latest record per person: "
            "the key, or its shredding after an erasure). Read only by the departments that open the "
            "sealed events",
            retention_ms=_YEAR,
            cleanup_policy="compact",
            configs=PERSON_KEY_TOPIC_CONFIGS,
        )
        for name, owner in ((LEADS_PERSON_KEYS, "leads"), (SALES_PERSON_KEYS, "sales"))
    ),
    *(
        TopicSpec(dead_letter_topic(s), s, f"Dead letters of the {s} consumer", partitions=1)
        for s in ("leads", "sales", "service-desk", "analytics", "gateway")
    ),
)

TOPICS_BY_NAME = {t.name: t for t in TOPICS}
