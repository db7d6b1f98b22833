"""Records: what analytics remembers of tickets, surveys, renewals, check-ins, action items and
the handoffs whose business latency it measures (pure, no I/O).

One faust table, ``records``, keyed ``<kind>:<id>`` (``ticket:T1``, ``item:A7``, ...). A record
is a mapping of **slots** (``opened``, ``resolved``, ``answered``, ...), each the facts one
event brought, with its time ``at`` (epoch seconds). Two copies of a slot are joined by a fixed
rule, so folding is idempotent and order-insensitive like every other fact here:

- a slot keeps its **earliest** copy (the first resolution, the first human step);
- a slot named ``last_...`` keeps its **latest** copy (an account's current tier);
- a tie in time keeps the smaller of the two in a canonical order (any fixed choice).

A slot named ``act@<time>`` is one of several actions (sales' steps on an opportunity): each
time is its own slot, so a set of times is a union of slots.

The KPIs (``analytics.domain.kpis``) are computed from the records when they are published;
the records hold no personal data beyond the ids the events carry, and nothing derived from
them names a person.

Custom fields (issue 9): an event carrying a record's extension map (``crm_contracts.extensions``,
``lead.captured`` v2, ``sales.account_created`` v2, ``opportunity.created`` v3, ``ticket.opened`` v2:
kinds ``lead``, ``sales_account``, ``opportunity`` and ``ticket``) gives that
record a ``last_custom`` slot, the latest map flattened to
scalars typed by their name: ``choice:<key>``, ``number:<key>``, ``date:<key>``, ``money:<key>``
(the amount) with ``currency:<key>``. Text values never arrive (the producers leave them out).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping

from crm_contracts import Envelope, Event
from crm_contracts.events.action_items import ActionItemUpdatedByCustomerSuccessV1, _Raised, _Updated
from crm_contracts.events.leads import LeadCapturedV1, LeadCapturedV2, LeadEditedV1, LeadQualifiedV1
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
    RenewalOutcome,
    RenewalRecordedV1,
    SurveyAnsweredV1,
    TicketOpenedV1,
    TicketOpenedV2,
    TicketResolvedV1,
    UpsellSpottedV1,
)
from crm_contracts.extensions import ExtensionField, ExtensionMoney

from analytics.domain.facts import shared

Scalar = str | float | int | bool | None
Slot = dict[str, Scalar]  # always holds "at": epoch seconds
Record = dict[str, Slot]
Change = tuple[str, Record]  # (record key, the slots an event brings)

LATEST_PREFIX = "last_"
ACT_PREFIX = "act@"


def _canonical(slot: Slot) -> str:
    return json.dumps(slot, sort_keys=True, default=str)


def _at(slot: Mapping[str, Scalar]) -> float:
    value = slot.get("at")
    return float(value) if isinstance(value, int | float) else 0.0


def join_slot(name: str, current: Slot | None, other: Slot) -> Slot:
    """The slot both copies make together (earliest, or latest for ``last_`` slots)."""
    if current is None:
        return dict(other)
    a, b = (_at(current), _canonical(current)), (_at(other), _canonical(other))
    if name.startswith(LATEST_PREFIX):
        a, b = (-a[0], a[1]), (-b[0], b[1])
    return dict(current) if a <= b else dict(other)


def join(current: Mapping[str, Slot] | None, other: Mapping[str, Slot]) -> Record:
    """Every slot of either record, each joined: idempotent, commutative, associative."""
    out: Record = {name: dict(slot) for name, slot in (current or {}).items()}
    for name, slot in other.items():
        out[name] = join_slot(name, out.get(name), slot)
    return out


def newest(record: Mapping[str, Slot]) -> float:
    """The time of a record's latest slot (epoch seconds): when it last moved."""
    return max((_at(slot) for slot in record.values()), default=0.0)


def expired(records: Mapping[str, object], cutoff: float) -> list[str]:
    """Keys of the records that last moved before ``cutoff`` (retention, issue 9)."""
    out = []
    for key, doc in list(records.items()):
        record = readable(doc)
        if record is None or newest(record) < cutoff:
            out.append(key)
    return out


def readable(doc: object) -> Record | None:
    """A stored record, or None when it is not one (a recovery never fails on one)."""
    if not isinstance(doc, dict):
        return None
    out: Record = {}
    for name, slot in doc.items():
        if (
            not isinstance(name, str)
            or not isinstance(slot, dict)
            or not isinstance(slot.get("at"), int | float)
        ):
            return None
        out[name] = {
            str(k): v for k, v in slot.items() if isinstance(v, str | int | float | bool) or v is None
        }
    return out


def changes(envelope: Envelope, event: Event, at: float | None = None) -> list[Change]:
    """The record slots one event brings (none for an event no KPI reads): those of each of
    :data:`CHANGERS` (in their order) whose classes the event is one of. ``at`` is the envelope's
    ``occurred_at`` in epoch seconds when the caller has it (pydantic's zone makes each
    ``timestamp()`` about 0.9 us)."""
    changers = _changers_of.get(type(event))
    if changers is None:
        changers = _changers_of[type(event)] = tuple(
            changer for changer, classes in CHANGERS if issubclass(type(event), classes)
        )
    if not changers:
        return []
    if at is None:
        at = envelope.occurred_at.timestamp()
    out: list[Change] = []
    for changer in changers:
        out.extend(changer(event, at))
    return out


CUSTOM_SLOT = "last_custom"


def _custom(event: Event, at: float) -> Iterator[Change]:
    """The record's latest custom field values (the event's extension map), flattened."""
    if isinstance(event, LeadCapturedV2) and event.custom:
        yield f"lead:{event.lead_id}", {CUSTOM_SLOT: custom_slot(event.custom, at)}
    elif isinstance(event, SalesAccountCreatedV2) and event.custom:
        yield f"sales_account:{event.account_id}", {CUSTOM_SLOT: custom_slot(event.custom, at)}
    elif isinstance(event, OpportunityCreatedV3) and event.custom:
        yield f"opportunity:{event.opportunity_id}", {CUSTOM_SLOT: custom_slot(event.custom, at)}
    elif isinstance(event, TicketOpenedV2) and event.custom:
        yield f"ticket:{event.ticket_id}", {CUSTOM_SLOT: custom_slot(event.custom, at)}


def custom_slot(custom: Mapping[str, ExtensionField], at: float) -> Slot:
    slot: Slot = {"at": at}
    for key, entry in sorted(custom.items()):
        if isinstance(entry.value, ExtensionMoney):
            slot[f"money:{key}"] = float(entry.value.amount)
            slot[f"currency:{key}"] = entry.value.currency
        else:
            slot[f"{entry.type.value}:{key}"] = entry.value
    return slot


# Customer success' human steps on an account: what ends the business latency of the outcomes
# handed back to it (an action item closed by marketing or sales, sales' answer to a flag).
CS_ACTS = (
    CheckInLoggedV1,
    OnboardingStepCompletedV1,
    TicketOpenedV1,
    TicketResolvedV1,
    RenewalRecordedV1,
    UpsellSpottedV1,
    CommitmentFlaggedV1,
)


def _cs_acts(event: Event, at: float) -> Iterator[Change]:
    """``csacts:<account>``: one ``act@<time>`` slot per human step of customer success."""
    account_id: str | None = None
    if isinstance(event, (CS_ACTS, _Raised)) or (
        isinstance(event, ActionItemUpdatedByCustomerSuccessV1) and not event.automatic
    ):
        account_id = event.account_id
    if account_id is not None:
        yield f"csacts:{account_id}", {f"{ACT_PREFIX}{at}": {"at": at}}


def _service(event: Event, at: float) -> Iterator[Change]:
    if isinstance(event, TicketOpenedV1):
        yield (
            f"ticket:{event.ticket_id}",
            {"opened": {"at": at, "account_id": event.account_id, "priority": event.priority}},
        )
    elif isinstance(event, TicketResolvedV1):
        yield (
            f"ticket:{event.ticket_id}",
            {
                "resolved": {
                    "at": at,
                    "account_id": event.account_id,
                    "first_response_seconds": event.first_response_seconds,
                    "resolution_seconds": event.resolution_seconds,
                    "breached": event.first_response_breached or event.resolution_breached,
                }
            },
        )
    elif isinstance(event, SurveyAnsweredV1):
        answered: Slot = {"at": event.answered_at.timestamp(), "account_id": event.account_id}
        yield (
            f"survey:{event.survey_id}",
            {"answered": {**answered, "kind": event.kind.value, "score": event.score}},
        )
    elif isinstance(event, RenewalRecordedV1):
        yield f"renewal:{event.renewal_id}", {"recorded": _renewal_slot(event, at)}
        yield f"account:{event.account_id}", {"last_tier": {"at": at, "tier": event.tier}}
        if event.outcome == RenewalOutcome.CHURNED:
            yield f"account:{event.account_id}", {"churned": {"at": event.due_date.timestamp()}}
    elif isinstance(event, CheckInLoggedV1):
        held = event.held_at.timestamp()
        yield f"checkin:{event.checkin_id}", {"held": {"at": held, "account_id": event.account_id}}
        yield f"account:{event.account_id}", {"last_tier": {"at": at, "tier": event.tier}}
    elif isinstance(event, OnboardingStartedV1):
        yield f"account:{event.account_id}", {"onboarded": {"at": at, "deal_id": event.deal_id}}
        yield f"deal:{event.deal_id}", {"account": {"at": at, "account_id": event.account_id}}


def _renewal_slot(event: RenewalRecordedV1, at: float) -> Slot:
    new_value = event.new_term.value.amount if event.new_term is not None else 0.0
    return {
        "at": at,
        "account_id": event.account_id,
        "due_at": event.due_date.timestamp(),
        "outcome": event.outcome.value,
        "previous_value": event.previous_value.amount,
        "new_value": new_value,
        "currency": event.previous_value.currency,
    }


def _channel_slot(event: LeadCapturedV1 | LeadQualifiedV1, at: float) -> Slot:
    """A lead's capture or qualification: its channel and campaign, shared (facts.shared)."""
    return {"at": at, "channel": shared(event.source_channel), "campaign": shared(event.campaign)}


def _voice(event: Event, at: float) -> Iterator[Change]:
    """Leads (channel, campaign, verdict reasons) and action items."""
    if isinstance(event, LeadCapturedV1) and not event.merged:
        yield f"lead:{event.lead_id}", {"captured": _channel_slot(event, at)}
    elif isinstance(event, LeadQualifiedV1):
        yield f"lead:{event.lead_id}", {"qualified": _channel_slot(event, at)}
    elif isinstance(event, LeadVerdictV1):
        reason = event.reason_code.value if event.reason_code is not None else None
        yield (
            f"lead:{event.lead_id}",
            {"verdict": {"at": at, "verdict": event.verdict.value, "reason": reason}},
        )
    elif isinstance(event, LeadEditedV1):
        # Marketing's human step on a lead (what ends lead-verdict's business latency); kept
        # apart from the lead's record so that marketing's channel figures do not see it.
        edited = event.edited_at.timestamp()
        yield f"leadacts:{event.lead_id}", {f"{ACT_PREFIX}{edited}": {"at": edited}}
    elif isinstance(event, _Raised):
        yield (
            f"item:{event.item_id}",
            {
                "raised": {
                    "at": event.raised_at.timestamp(),
                    "department": event.department.value,
                    "due_at": event.due_at.timestamp(),
                }
            },
        )
    elif isinstance(event, _Updated):
        step: Slot = {
            "at": event.acted_at.timestamp(),
            "automatic": event.automatic,
            "department": event.department.value,
            "raised_at": event.raised_at.timestamp(),
            "due_at": event.due_at.timestamp(),
            "account_id": event.account_id,
        }
        yield f"item:{event.item_id}", {f"step_{event.status.value}": step}


def _handoffs(event: Event, at: float) -> Iterator[Change]:
    """What the business latencies pair: a handoff and the receiver's first human action."""
    if isinstance(event, DealWonV1):
        yield f"deal:{event.deal_id}", {"won": {"at": at}}
    elif isinstance(event, UpsellSpottedV1):
        yield f"signal:{event.signal_id}", {"spotted": {"at": at}}
    elif isinstance(event, OpportunityCreatedV1) and event.signal_id:
        yield f"opp:{event.opportunity_id}", {"signal": {"at": at, "signal_id": event.signal_id}}
    elif isinstance(event, OpportunityStageChangedV1 | ActivityLoggedV1):
        yield f"opp:{event.opportunity_id}", {f"{ACT_PREFIX}{at}": {"at": at}}
    elif isinstance(event, CommitmentFlaggedV1):
        yield f"flag:{event.flag_id}", {"flagged": {"at": at, "deal_id": event.deal_id}}
    elif isinstance(event, CommitmentReviewRequestedV1):
        yield f"review:{event.review_id}", {"requested": {"at": at, "deal_id": event.deal_id}}
    elif isinstance(event, CommitmentReviewCompletedV1):
        yield f"review:{event.review_id}", {"completed": {"at": at, "deal_id": event.deal_id}}
    elif isinstance(event, CommitmentFlagUpdatedBySalesV1):
        answer: Slot = {"at": event.acted_at.timestamp(), "account_id": event.account_id}
        yield f"flag:{event.flag_id}", {event.status.value: answer}
    elif isinstance(event, OnboardingStepCompletedV1):
        yield f"deal:{event.deal_id}", {"first_step": {"at": event.completed_at.timestamp()}}


Changer = Callable[[Event, float], Iterator[Change]]
# Each changer with every class it tests an event against (its isinstance checks; a test reads
# them from its source): ``changes`` calls, per event class, only the changers that can yield.
CHANGERS: tuple[tuple[Changer, tuple[type, ...]], ...] = (
    (
        _service,
        (
            TicketOpenedV1,
            TicketResolvedV1,
            SurveyAnsweredV1,
            RenewalRecordedV1,
            CheckInLoggedV1,
            OnboardingStartedV1,
        ),
    ),
    (_voice, (LeadCapturedV1, LeadQualifiedV1, LeadVerdictV1, LeadEditedV1, _Raised, _Updated)),
    (
        _handoffs,
        (
            DealWonV1,
            UpsellSpottedV1,
            OpportunityCreatedV1,
            OpportunityStageChangedV1,
            ActivityLoggedV1,
            CommitmentFlaggedV1,
            CommitmentReviewRequestedV1,
            CommitmentReviewCompletedV1,
            CommitmentFlagUpdatedBySalesV1,
            OnboardingStepCompletedV1,
        ),
    ),
    (_cs_acts, (*CS_ACTS, _Raised, ActionItemUpdatedByCustomerSuccessV1)),
    (_custom, (LeadCapturedV2, SalesAccountCreatedV2, OpportunityCreatedV3, TicketOpenedV2)),
)
# isinstance against the contracts' pydantic models costs 60-100 ns a miss (their metaclass's
# __instancecheck__): the five changers' chains were about 3 us per event; now one lookup.
_changers_of: dict[type, tuple[Changer, ...]] = {}
