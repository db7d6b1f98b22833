"""The event types analytics reads; every other one is skipped by its ``event_type`` header, unread.

A record's classification (the JSON parse, the envelope and payload validation) is most of what
the worker spends on it, so a record whose type nothing here folds is not read at all: the
worker looks at its ``event_type`` header (every producer's envelope puts one there,
``Envelope.headers``) and skips it when the header names one of the contracts' types that is
not in :data:`READ_EVENT_TYPES`. A record without the header, or whose header names no known
type, is read as before. Skipping never folds anything wrong: a header that
names a type analytics does not fold while the body holds one it does would only leave that
event uncounted, and the departments' own consumers, which own those events, dead-letter a bad
one.

:data:`FOLDED_CLASSES` lists every class the folds test an event against (``engine.apply``,
``records.changes``, the worker's permission policy and erasure confirmation); a test reads
those modules' ``isinstance(event, ...)`` checks and fails when one names a class not covered
here, so a new fold cannot be skipped by mistake.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from crm_contracts.events.action_items import ActionItemUpdatedByCustomerSuccessV1, _Raised, _Updated
from crm_contracts.events.governance import ErasureRequestedV1, PermissionsChangedV1
from crm_contracts.events.leads import LeadCapturedV1, LeadCapturedV2, LeadEditedV1, LeadQualifiedV1
from crm_contracts.events.platform import HandoffReceivedV1
from crm_contracts.events.sales import (
    ActivityLoggedV1,
    CommitmentFlagUpdatedBySalesV1,
    CommitmentReviewRequestedV1,
    DealWonV1,
    LeadVerdictV1,
    OpportunityCreatedV1,
    OpportunityCreatedV3,
    OpportunityStageChangedV1,
    SalesAccountCreatedV2,
)
from crm_contracts.events.service_desk import (
    CheckInLoggedV1,
    CommitmentFlaggedV1,
    CommitmentReviewCompletedV1,
    OnboardingStartedV1,
    OnboardingStepCompletedV1,
    RenewalRecordedV1,
    SurveyAnsweredV1,
    TicketOpenedV1,
    TicketOpenedV2,
    TicketResolvedV1,
    UpsellSpottedV1,
)
from crm_contracts.registry import ALL_EVENTS
from crm_platform.dead_letters import REPLAY_FOR

FOLDED_CLASSES: tuple[type, ...] = (
    # engine.apply
    LeadCapturedV1,
    LeadQualifiedV1,
    LeadVerdictV1,
    DealWonV1,
    OnboardingStartedV1,
    OnboardingStepCompletedV1,
    HandoffReceivedV1,
    # records.changes
    LeadCapturedV2,
    LeadEditedV1,
    SalesAccountCreatedV2,
    OpportunityCreatedV1,
    OpportunityCreatedV3,
    OpportunityStageChangedV1,
    ActivityLoggedV1,
    CommitmentReviewRequestedV1,
    CommitmentFlagUpdatedBySalesV1,
    TicketOpenedV1,
    TicketOpenedV2,
    TicketResolvedV1,
    SurveyAnsweredV1,
    RenewalRecordedV1,
    CheckInLoggedV1,
    UpsellSpottedV1,
    CommitmentFlaggedV1,
    CommitmentReviewCompletedV1,
    _Raised,
    _Updated,
    ActionItemUpdatedByCustomerSuccessV1,
    # the worker: the permission policy, the erasure confirmations
    PermissionsChangedV1,
    ErasureRequestedV1,
)

# By type, every version: a type is read when any of its versions is folded.
READ_EVENT_TYPES: frozenset[str] = frozenset(
    e.event_type for e in ALL_EVENTS if issubclass(e, FOLDED_CLASSES)
)
# What is skipped: the contracts' other types. A header naming no known type is read (and
# judged: a forged or garbled header is no reason to skip a record).
SKIPPED_EVENT_TYPES: frozenset[str] = frozenset(e.event_type for e in ALL_EVENTS) - READ_EVENT_TYPES


def unread_type(headers: Iterable[tuple[str, object]] | Mapping[str, object] | None) -> str | None:
    """The record's ``event_type`` header when it names a contract type analytics does not read,
    else None (a type it reads, an unknown one, or no header: the record is read)."""
    pairs = headers.items() if isinstance(headers, Mapping) else (headers or ())
    for key, value in pairs:
        if key == "event_type" and isinstance(value, bytes | bytearray):
            event_type = bytes(value).decode(errors="replace")
            return event_type if event_type in SKIPPED_EVENT_TYPES else None
    return None


def triage(
    headers: Iterable[tuple[str, object]] | Mapping[str, object] | None, group: str
) -> tuple[str, str] | None:
    """What to count instead of reading the record, from one pass over its headers: ``("replay",
    "ignored")`` for a dead letter replayed for another group than ``group``
    (``crm_platform.dead_letters.skips_replay``), else ``(its type, "skipped")`` for a type
    analytics does not read (:func:`unread_type`); None: read it. The same answers as those two
    functions one after the other (each header pass was 0.6-0.8 us a record)."""
    pairs = headers.items() if isinstance(headers, Mapping) else (headers or ())
    target: bytes | bytearray | None = None
    event_type: bytes | bytearray | None = None
    for key, value in pairs:
        if key == REPLAY_FOR:
            if target is None and isinstance(value, bytes | bytearray):
                target = value
        elif key == "event_type" and event_type is None and isinstance(value, bytes | bytearray):
            event_type = value
    if target is not None and bytes(target).decode(errors="replace") != group:
        return ("replay", "ignored")
    if event_type is not None:
        name = bytes(event_type).decode(errors="replace")
        if name in SKIPPED_EVENT_TYPES:
            return (name, "skipped")
    return None
