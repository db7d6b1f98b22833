"""Prometheus metrics every service exports; names are part of the ops contract.

Dashboards and alerts in ``deploy/monitoring`` use exactly these names (a test
checks it), so rename only together with them.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Transport latencies are milliseconds to seconds; the top buckets catch a
# receiver that was down for minutes and is catching up.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
    1800,
)

EVENTS_PRODUCED = Counter(
    "crm_events_produced",
    "Events published by the outbox relay",
    ["service", "topic", "event_type"],
)
EVENTS_CONSUMED = Counter(
    "crm_events_consumed",
    "Events taken off a topic, by outcome",
    ["service", "topic", "event_type", "outcome"],
)
PROCESSING_SECONDS = Histogram(
    "crm_event_processing_seconds",
    "Time to store one consumed event's effect",
    ["service", "event_type"],
    buckets=LATENCY_BUCKETS,
)
OUTBOX_BACKLOG = Gauge(
    "crm_outbox_backlog",
    "Events stored in the outbox but not yet published",
    ["service"],
)
BROKER_REACHABLE = Gauge(
    "crm_broker_reachable",
    "1 when the service's last broker check (every CRM_BROKER_CHECK_SECONDS) answered, 0 otherwise; "
    "readiness does not depend on it (the outbox keeps writes going through a broker outage)",
    ["service"],
)
OUTBOX_REPUBLISHED = Counter(
    "crm_outbox_republished",
    "Published events the broker lost afterwards (not at the acknowledged position), published again",
    ["service", "topic"],
)
PERSON_KEY_WAITS = Counter(
    "crm_person_key_waits",
    "Tries of a sealed event put back because its person key had not arrived yet (crm_platform.shredding)",
    ["service", "topic"],
)
ERASURE_RECHECKS = Counter(
    "crm_erasure_rechecks",
    "Erasure requests matched again once every transaction begun before their erasure had ended "
    "(crm_platform.erasure.recheck_loop), by what the recheck found: erased (a late writer's "
    "records) or clean",
    ["service", "outcome"],
)
DEAD_LETTERED = Counter(
    "crm_dead_lettered",
    "Events sent to the dead-letter topic",
    ["service", "topic", "reason"],
)
CONSUMER_LAG = Gauge(
    "crm_consumer_lag",
    "Messages between the group's committed offset and the high watermark, per partition this member "
    "holds (sampled on a timer by crm_platform.liveness; dropped when the partition is revoked)",
    ["service", "topic", "partition"],
)
HANDOFF_TRANSPORT_LATENCY = Histogram(
    "crm_handoff_transport_latency_seconds",
    "Handoff occurred -> effect stored by the receiving department",
    ["handoff", "from_department", "to_department"],
    buckets=LATENCY_BUCKETS,
)
HANDOFFS_RESENT = Counter(
    "crm_handoff_resent",
    "Handoffs published again (same event id) because no receipt came back in time",
    ["service", "handoff"],
)
HANDOFFS_UNRECEIPTED = Gauge(
    "crm_handoffs_unreceipted",
    "Handoffs this service published whose receipt has not arrived (in flight, re-sent or given up)",
    ["service", "handoff"],
)
HANDOFF_UNRECEIPTED_OLDEST = Gauge(
    "crm_handoff_unreceipted_oldest_seconds",
    "Age of the oldest handoff this service sent without a receipt (0 when none)",
    ["service", "handoff"],
)
HANDOFFS_GIVEN_UP = Gauge(
    "crm_handoffs_resend_exhausted",
    "Handoffs re-sent the maximum number of times and still without a receipt",
    ["service", "handoff"],
)
HTTP_REQUESTS = Counter(
    "crm_http_requests",
    "HTTP requests served",
    ["service", "method", "route", "status"],
)
HTTP_SECONDS = Histogram(
    "crm_http_request_seconds",
    "HTTP request duration",
    ["service", "method", "route"],
    buckets=LATENCY_BUCKETS,
)
CONSUMER_STALLED = Gauge(
    "crm_consumer_stalled",
    "1 while a partition this member holds has lag and its committed offset has not moved "
    "for CRM_CONSUMER_STALL_SECONDS",
    ["service", "group", "topic", "partition"],
)
CONSUMER_REJOINS = Counter(
    "crm_consumer_rejoins",
    "Times the liveness watchdog dropped a stalled consumer's Kafka clients and rejoined its group",
    ["service", "group"],
)
