"""Service desk metrics (``crm_service_desk_`` prefix), beside the platform's shared ones."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

TICKETS_OPENED = Counter(
    "crm_service_desk_tickets_opened",
    "Tickets opened, by priority",
    ["priority"],
)
TICKETS_RESOLVED = Counter(
    "crm_service_desk_tickets_resolved",
    "Tickets resolved, by priority and SLA breaches",
    ["priority", "first_response_breached", "resolution_breached"],
)
CSAT = Histogram(
    "crm_service_desk_csat",
    "Customer satisfaction ratings (1-5)",
    buckets=(1, 2, 3, 4, 5),
)
SIGNALS = Counter(
    "crm_service_desk_signals",
    "Upsell/renewal signals handed to sales",
    ["kind"],
)
ONBOARDING_SECONDS = Histogram(
    "crm_service_desk_onboarding_seconds",
    "Account onboarding started -> completed",
    buckets=(3600, 86400, 3 * 86400, 7 * 86400, 14 * 86400, 30 * 86400, 60 * 86400, 90 * 86400),
)


def observe_onboarding(duration_seconds: float) -> None:
    ONBOARDING_SECONDS.observe(duration_seconds)


def observe_signal(kind: str) -> None:
    SIGNALS.labels(kind).inc()


def observe_ticket_opened(priority: str) -> None:
    TICKETS_OPENED.labels(priority).inc()


def observe_ticket_resolved(priority: str, first_response_breached: bool, resolution_breached: bool) -> None:
    TICKETS_RESOLVED.labels(
        priority, str(first_response_breached).lower(), str(resolution_breached).lower()
    ).inc()
