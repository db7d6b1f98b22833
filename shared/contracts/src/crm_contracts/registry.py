"""Every (event type, version) the platform knows, and typed encode/decode."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from crm_contracts.base import Event
from crm_contracts.envelope import Envelope, built, new_event_id, utcnow
from crm_contracts.events import action_items, governance, leads, person_keys, platform, sales, service_desk
from crm_contracts.topics import TOPICS_BY_NAME

ALL_EVENTS: tuple[type[Event], ...] = (
    leads.LeadCapturedV1,
    leads.LeadCapturedV2,
    leads.LeadCapturedV3,
    leads.BehaviourRecordedV1,
    leads.LeadQualifiedV1,
    leads.LeadQualifiedV2,
    leads.LeadStatusChangedV1,
    leads.LeadEditedV1,
    sales.LeadVerdictV1,
    sales.LeadAssignedV1,
    sales.OpportunityCreatedV1,
    sales.OpportunityCreatedV2,
    sales.OpportunityCreatedV3,
    sales.SalesAccountCreatedV1,
    sales.SalesAccountCreatedV2,
    sales.SalesContactCreatedV1,
    sales.OpportunityStageChangedV1,
    sales.ActivityLoggedV1,
    sales.OpportunityLostV1,
    sales.DealWonV1,
    sales.DealWonV2,
    sales.DealWonV3,
    sales.CommitmentReviewRequestedV1,
    sales.CommitmentFlagUpdatedBySalesV1,
    service_desk.OnboardingStartedV1,
    service_desk.OnboardingCompletedV1,
    service_desk.OnboardingStepCompletedV1,
    service_desk.TicketOpenedV1,
    service_desk.TicketOpenedV2,
    service_desk.TicketResolvedV1,
    service_desk.TicketRatedV1,
    service_desk.UpsellSpottedV1,
    service_desk.CommitmentFlaggedV1,
    service_desk.RenewalRecordedV1,
    service_desk.CheckInLoggedV1,
    service_desk.HealthScoredV1,
    service_desk.ChurnRiskChangedV1,
    service_desk.SurveyAnsweredV1,
    service_desk.CommitmentReviewCompletedV1,
    action_items.ActionItemRaisedForMarketingV1,
    action_items.ActionItemRaisedForSalesV1,
    action_items.ActionItemRaisedForCustomerSuccessV1,
    action_items.ActionItemUpdatedByMarketingV1,
    action_items.ActionItemUpdatedBySalesV1,
    action_items.ActionItemUpdatedByCustomerSuccessV1,
    platform.HandoffReceivedV1,
    governance.PermissionsChangedV1,
    governance.ErasureRequestedV1,
    governance.ErasureCompletedV1,
    governance.ErasureErasedV1,
    person_keys.LeadPersonKeyIssuedV1,
    person_keys.LeadPersonKeyIssuedV2,
    person_keys.LeadPersonKeyShreddedV1,
    person_keys.SalesPersonKeyIssuedV1,
    person_keys.SalesPersonKeyIssuedV2,
    person_keys.SalesPersonKeyShreddedV1,
)

REGISTRY: dict[tuple[str, int], type[Event]] = {(e.event_type, e.version): e for e in ALL_EVENTS}
TOPIC_BY_EVENT_TYPE: dict[str, str] = {e.event_type: e.topic for e in ALL_EVENTS}


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
    """Wrap a validated event in a fresh envelope.

    Its payload is the validated event's own JSON form and the other fields are checked here as
    the envelope's model would check them, so the envelope is built without validating all of
    it again (:func:`crm_contracts.envelope.built`; every emitted event paid that); anything
    the model would refuse goes through the model, which says why."""
    at = occurred_at or utcnow()
    event_type, version, key = event.event_type, event.version, event.partition_key()
    if not (
        _text(event_type, source, correlation_id, key)
        and type(version) is int
        and version >= 1
        and (causation_id is None or type(causation_id) is str)
        and isinstance(at, datetime)
        and at.utcoffset() is not None
    ):  # what the model would refuse (or change): the model says why
        return Envelope(
            event_type=event_type,
            schema_version=version,
            occurred_at=at,
            source=source,
            correlation_id=correlation_id,
            causation_id=causation_id,
            partition_key=key,
            payload=event.to_payload(),
        )
    values = {
        "event_id": new_event_id(),  # in the order of a validated envelope's values
        "event_type": event_type,
        "schema_version": version,
        "occurred_at": at,
        "produced_at": None,
        "source": source,
        "correlation_id": correlation_id,
        "causation_id": causation_id,
        "partition_key": key,
        "payload": event.to_payload(),
    }
    return built(values, set(_GIVEN))


# The fields envelope_for gives (its envelope's ``model_fields_set``, as validation notes them).
_GIVEN = frozenset(
    (
        "event_type",
        "schema_version",
        "occurred_at",
        "source",
        "correlation_id",
        "causation_id",
        "partition_key",
        "payload",
    )
)


def _text(*values: object) -> bool:
    """Whether each value is a non-empty string (the envelope's ``min_length=1`` text fields)."""
    for value in values:  # noqa: SIM110 - a loop: all() over a generator costs more here
        if type(value) is not str or not value:
            return False
    return True


def decode(envelope: Envelope) -> Event:
    """Validate the payload against its declared (type, version); raises on mismatch."""
    model = model_for(envelope.event_type, envelope.schema_version)
    return model.model_validate(envelope.payload)


def decode_payload(event_type: str, version: int, payload: dict[str, Any]) -> Event:
    return model_for(event_type, version).model_validate(payload)


def wrong_source(topic: str, envelope: Envelope) -> str | None:
    """Why this envelope may not travel on ``topic`` (a forged handoff), or None.

    From the topic table: the ``source`` must be one of the topic's producers and a
    known ``event_type`` must be declared for this topic. An event type no contract
    knows is left to :func:`model_for` (``unknown_version``); a topic outside the
    table has no rule.
    """
    spec = TOPICS_BY_NAME.get(topic)
    if spec is None:
        return None
    if envelope.source not in spec.sources():
        allowed = ", ".join(sorted(spec.sources()))
        return f"source {envelope.source!r} may not publish to {topic} (producers: {allowed})"
    declared = TOPIC_BY_EVENT_TYPE.get(envelope.event_type)
    if declared is not None and declared != topic:
        return f"{envelope.event_type} belongs on {declared}, not {topic}"
    return None
