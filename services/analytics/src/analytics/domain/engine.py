"""The stream logic: one validated event in, the analytics state updated (no I/O).

``apply(state, envelope, event)`` is all the faust agent calls. The state is three
fact tables (plain mutable mappings: dicts in unit tests, faust tables in the worker) holding
the frozen fact objects the engine folds (a table recovered from its changelog holds JSON
documents until they are folded again; ``analytics.domain.facts``), the records table, and the
in-memory figures derived from them:

- ``leads``    lead_id -> LeadFacts      (lead.captured, lead.qualified, lead.verdict, deal.won)
- ``deals``    deal_id -> DealFacts      (deal.won, account.onboarding_started and _step_completed)
- ``receipts`` handoff_event_id -> ReceiptFact (handoff.received)
- ``records``  ``<kind>:<id>`` -> Record   (tickets, surveys, renewals, check-ins, action items,
  and the steps business latencies pair; ``analytics.domain.records``), which the KPIs
  (``analytics.domain.kpis``) are computed from

Facts are keyed by the business id, never counted: a redelivered or replayed event
rewrites the same fact, so no figure moves; events arriving out of order (the
verdict before the qualification, the onboarding before the win) meet in the facts
and give the same figures as in order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

from crm_contracts import Envelope, Event
from crm_contracts.events.leads import LeadCapturedV1, LeadQualifiedV1
from crm_contracts.events.platform import HandoffReceivedV1
from crm_contracts.events.sales import DealWonV1, LeadVerdictV1, Verdict
from crm_contracts.events.service_desk import OnboardingStartedV1, OnboardingStepCompletedV1

from analytics.domain import records
from analytics.domain.facts import (
    DealFacts,
    DealValue,
    LeadFacts,
    LeadValue,
    ReceiptFact,
    ReceiptValue,
    epoch,
    plausible_latency,
    shared,
)
from analytics.domain.figures import (
    BUSINESS,
    TRANSPORT,
    Figures,
    deal_contribution,
    lead_contribution,
    receipt_contribution,
)
from analytics.domain.records import Record

# What a lead or deal not seen yet is folded from (frozen: one shared empty fact, not a new
# one per new lead of a replay).
NO_LEAD = LeadFacts()
NO_DEAL = DealFacts()


class ImplausibleEvent(ValueError):
    """A contract-valid event whose figures cannot be real (the worker dead-letters it)."""


@dataclass
class AnalyticsState:
    # Plain dicts in unit tests, faust tables in the worker.
    leads: MutableMapping[str, LeadValue] = field(default_factory=dict)
    deals: MutableMapping[str, DealValue] = field(default_factory=dict)
    receipts: MutableMapping[str, ReceiptValue] = field(default_factory=dict)
    records: MutableMapping[str, Record] = field(default_factory=dict)
    records_version: int = 0  # bumped whenever a record changes (the KPIs are computed again)
    # Retention of the records (epoch seconds): a record whose every slot is older is not kept,
    # so a replayed old event (the reconciler's) does not bring an expired record back.
    records_kept_from: float = 0.0
    figures: Figures = field(default_factory=Figures)
    applied: int = 0  # events that changed a fact (diagnostics only)

    # -- reading facts ---------------------------------------------------------
    def lead(self, lead_id: str) -> LeadFacts | None:
        doc = self.leads.get(lead_id)
        return LeadFacts.from_json(doc) if doc else None

    def deal(self, deal_id: str) -> DealFacts | None:
        doc = self.deals.get(deal_id)
        return DealFacts.from_json(doc) if doc else None

    def receipt(self, handoff_event_id: str) -> ReceiptFact | None:
        return ReceiptFact.from_json(self.receipts.get(handoff_event_id))


def apply(state: AnalyticsState, envelope: Envelope, event: Event) -> AnalyticsState:  # noqa: C901
    """Fold one event into the state and return it (the tables are updated in place).

    One flat branch per event type (its complexity is the number of types it folds):
    splitting it would scatter the one place that says what each event means here.
    """
    at = epoch(envelope.occurred_at)
    for key, slots in records.changes(envelope, event, at):
        _update_record(state, key, slots)
    # The strings a fact keeps for long are shared (facts.shared).
    if isinstance(event, LeadCapturedV1):
        if not event.merged:  # a merged capture is a known lead seen again: not a new one
            channel = shared(event.source_channel)
            _update_lead(state, event.lead_id, lambda f: f.with_capture(at, channel))
    elif isinstance(event, LeadQualifiedV1):
        channel = shared(event.source_channel)
        _update_lead(state, event.lead_id, lambda f: f.with_qualification(at, channel))
    elif isinstance(event, LeadVerdictV1):
        accepted = event.verdict == Verdict.ACCEPTED
        _update_lead(
            state,
            event.lead_id,
            lambda f: f.with_verdict(at).with_acceptance(at) if accepted else f.with_verdict(at),
        )
    elif isinstance(event, DealWonV1):
        _update_deal(state, event.deal_id, lambda f: f.with_win(at, event.lead_id))
        if event.lead_id:
            _update_lead(state, event.lead_id, lambda f: f.with_deal(event.deal_id))
    elif isinstance(event, OnboardingStartedV1):
        _update_deal(state, event.deal_id, lambda f: f.with_onboarding(at))
    elif isinstance(event, OnboardingStepCompletedV1):
        step_at = event.completed_at.timestamp()
        _update_deal(state, event.deal_id, lambda f: f.with_first_step(step_at))
    elif isinstance(event, HandoffReceivedV1):
        if not plausible_latency(event.transport_latency_seconds):
            raise ImplausibleEvent(f"transport latency {event.transport_latency_seconds} s")
        _update_receipt(
            state,
            event.handoff_event_id,
            ReceiptFact(shared(event.handoff), event.transport_latency_seconds, epoch(event.stored_at)),
        )
    return state


def _update_record(state: AnalyticsState, key: str, slots: Record) -> None:
    """Join ``slots`` (an event's own: :func:`records.changes` builds them per event) into the
    record at ``key``. A new record is the slots themselves: the join of nothing with them is
    a copy of each, equal, and nothing else holds them."""
    stored = state.records.get(key)
    before = None if stored is None else records.readable(stored)
    after = slots if before is None else records.join(before, slots)
    if after == before or records.newest(after) < state.records_kept_from:
        return
    state.records[key] = after
    state.applied += 1
    state.records_version += 1


def _update_lead(state: AnalyticsState, lead_id: str, change: Callable[[LeadFacts], LeadFacts]) -> None:
    before = state.lead(lead_id)
    after = change(before or NO_LEAD)
    if after == before:
        return
    state.leads[lead_id] = after
    state.applied += 1
    state.figures.replace(lead_contribution(before), lead_contribution(after))
    if before is None or before.channel != after.channel:
        # The lead's deals count under its channel: move them along with it.
        for deal_id in after.deal_ids:
            deal = state.deal(deal_id)
            if deal is None or deal.lead_id != lead_id:
                continue
            state.figures.replace(deal_contribution(deal, before), deal_contribution(deal, after))


def _update_deal(state: AnalyticsState, deal_id: str, change: Callable[[DealFacts], DealFacts]) -> None:
    before = state.deal(deal_id)
    after = change(before or NO_DEAL)
    if after == before:
        return
    state.deals[deal_id] = after
    state.applied += 1
    old_lead = state.lead(before.lead_id) if before is not None and before.lead_id else None
    new_lead = state.lead(after.lead_id) if after.lead_id else None
    state.figures.replace(deal_contribution(before, old_lead), deal_contribution(after, new_lead))


def _update_receipt(state: AnalyticsState, key: str, receipt: ReceiptFact) -> None:
    before = state.receipt(key)
    after = receipt if before is None else before.merged(receipt)
    if after == before:
        return
    state.receipts[key] = after
    state.applied += 1
    state.figures.replace(receipt_contribution(before), receipt_contribution(after))


def forget_records(state: AnalyticsState, cutoff: float) -> int:
    """Retention: drop the records that last moved before ``cutoff`` (epoch seconds), and keep
    older ones from coming back; returns how many were dropped (the KPIs are computed again)."""
    state.records_kept_from = max(state.records_kept_from, cutoff)
    gone = records.expired(state.records, cutoff)
    for key in gone:
        del state.records[key]
    if gone:
        state.records_version += 1
    return len(gone)


def rebuild_figures(state: AnalyticsState) -> AnalyticsState:
    """Recompute every figure from the facts (after the tables were recovered)."""
    figures = Figures(version=state.figures.version + 1)
    leads: dict[str, LeadFacts] = {}
    for key, doc in list(state.leads.items()):
        lead = _readable(LeadFacts.from_json, doc)
        if lead is not None:
            leads[key] = lead
            figures.add(lead_contribution(lead))
    for deal_doc in list(state.deals.values()):
        deal = _readable(DealFacts.from_json, deal_doc)
        if deal is not None:
            figures.add(deal_contribution(deal, leads.get(deal.lead_id or "")))
    for receipt_doc in list(state.receipts.values()):
        figures.add(receipt_contribution(_readable(ReceiptFact.from_json, receipt_doc)))
    state.figures = figures
    return state


def merge_state(state: AnalyticsState, other: AnalyticsState) -> int:
    """Fold every fact of ``other`` into ``state``; returns how many facts changed.

    The folds are joins (earliest times, unions of sets), so merging the facts of
    a replay of the log gives the state a replay into ``state`` itself would give:
    what ``state`` lacked is added, nothing it had is taken away. Synchronous on
    purpose: no other writer interleaves with a merge in one event loop.
    """
    changed = state.applied
    for lead_id, doc in list(other.leads.items()):
        if doc:
            theirs = LeadFacts.from_json(doc)
            _update_lead(state, lead_id, partial(LeadFacts.merged, other=theirs))
    for deal_id, deal_doc in list(other.deals.items()):
        if deal_doc:
            deal = DealFacts.from_json(deal_doc)
            _update_deal(state, deal_id, partial(DealFacts.merged, other=deal))
    for key, receipt_doc in list(other.receipts.items()):
        receipt = ReceiptFact.from_json(receipt_doc)
        if receipt is not None:
            _update_receipt(state, key, receipt)
    for key, record_doc in list(other.records.items()):
        record = records.readable(record_doc)
        if record:
            _update_record(state, key, record)
    return state.applied - changed


def figure_values(figures: Figures, records_table: Mapping[str, Record] | None = None) -> dict[str, int]:
    """The countable figures, by name: funnel stages and latency sample counts per handoff, and
    (given the records) how many records of each kind the KPIs are computed from (``records:<kind>``)."""
    values = {f"funnel:{stage}": count for stage, count in figures.funnel.items()}
    for key in records_table or {}:
        kind = f"records:{key.partition(':')[0]}"
        values[kind] = values.get(kind, 0) + 1
    for name, kinds in figures.handoff_summary().items():
        values[f"{TRANSPORT}_samples:{name}"] = kinds["transport"]["count"]
        if (business := kinds["business"]) is not None:
            values[f"{BUSINESS}_samples:{name}"] = business["count"]
    return values


F = TypeVar("F")
D = TypeVar("D")


def _readable(read: Callable[[D], F | None], doc: D) -> F | None:
    """A stored fact, or None when it is empty or unreadable: a recovery never crashes on one."""
    if not doc:
        return None
    try:
        return read(doc)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
