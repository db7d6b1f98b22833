"""Every (event type, version) the platform knows, and typed encode/decode."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from crm_contracts.base import Event
from crm_contracts.envelope import Envelope, utcnow
from crm_contracts.events import leads, platform, sales, service_desk

ALL_EVENTS: tuple[type[Event], ...] = (
    leads.LeadCapturedV1,
    leads.BehaviourRecordedV1,
    leads.LeadQualifiedV1,
    leads.LeadStatusChangedV1,
    sales.LeadVerdictV1,
    sales.LeadAssignedV1,
    sales.OpportunityCreatedV1,
    sales.OpportunityStageChangedV1,
    sales.ActivityLoggedV1,
    sales.OpportunityLostV1,
    sales.DealWonV1,
    service_desk.OnboardingStartedV1,
    service_desk.OnboardingCompletedV1,
    service_desk.TicketOpenedV1,
    service_desk.TicketResolvedV1,
    service_desk.TicketRatedV1,
    service_desk.UpsellSpottedV1,
    service_desk.CommitmentFlaggedV1,
    platform.HandoffReceivedV1,
)

REGISTRY: dict[tuple[str, int], type[Event]] = {(e.event_type, e.version): e for e in ALL_EVENTS}


class UnknownEventError(Exception):
    """The (event type, version) pair is not in this build's contracts."""


def model_for(event_type: str, version: int) -> type[Event]:
    try:
        return REGISTRY[(event_type, version)]
    except KeyError:
        known = sorted(v for (t, v) in REGISTRY if t == event_type)
        hint = f"known versions: {known}" if known else "unknown event type"
        raise UnknownEventError(f"{event_type} v{version} ({hint})") from None


def envelope_for(
    event: Event,
    *,
    source: str,
    correlation_id: str,
    causation_id: str | None = None,
    occurred_at: datetime | None = None,
) -> Envelope:
    """Wrap a validated event in a fresh envelope."""
    return Envelope(
        event_type=event.event_type,
        schema_version=event.version,
        occurred_at=occurred_at or utcnow(),
        source=source,
        correlation_id=correlation_id,
        causation_id=causation_id,
        partition_key=event.partition_key(),
        payload=event.to_payload(),
    )


def decode(envelope: Envelope) -> Event:
    """Validate the payload against its declared (type, version); raises on mismatch."""
    model = model_for(envelope.event_type, envelope.schema_version)
    return model.model_validate(envelope.payload)


def decode_payload(event_type: str, version: int, payload: dict[str, Any]) -> Event:
    return model_for(event_type, version).model_validate(payload)
