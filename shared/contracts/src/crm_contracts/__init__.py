"""CRM event contracts: the only thing departments share."""

from crm_contracts.base import Event
from crm_contracts.envelope import Envelope, utcnow
from crm_contracts.handoffs import HANDOFF_BY_EVENT_TYPE, HANDOFFS, Handoff
from crm_contracts.registry import (
    ALL_EVENTS,
    REGISTRY,
    UnknownEventError,
    decode,
    envelope_for,
    model_for,
)

__all__ = [
    "ALL_EVENTS",
    "HANDOFFS",
    "HANDOFF_BY_EVENT_TYPE",
    "REGISTRY",
    "Envelope",
    "Event",
    "Handoff",
    "UnknownEventError",
    "decode",
    "envelope_for",
    "model_for",
    "utcnow",
]
