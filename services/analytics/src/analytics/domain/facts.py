"""What analytics remembers per lead, per deal and per handoff receipt (pure, no I/O).

Every fold is *order-insensitive and idempotent*: it keeps the earliest time of
each stage (or, for re-qualifications, the set of the most recent times), so the
same event applied twice, or two events applied in either order, give the same
facts. That is what makes every figure derived from the facts safe under Kafka's
at-least-once redelivery and under cross-topic reordering.

The worker's tables hold the facts as these objects (what the engine folds, no copy per
event); their changelogs hold them as JSON (``to_json``, written at each flush:
:func:`stored_json`), and a table recovered from its changelog holds the JSON documents until
a fold replaces them: ``from_json`` reads either. Times are epoch seconds (floats).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from sys import intern
from typing import NotRequired, TypedDict, TypeVar, cast

from crm_contracts.envelope import MAX_CLOCK_SKEW, MAX_EVENT_AGE

MAX_QUALIFICATIONS = 8  # re-qualifications kept per lead (the most recent ones)
MAX_CLOCK_SKEW_SECONDS = MAX_CLOCK_SKEW.total_seconds()
MAX_EVENT_AGE_SECONDS = MAX_EVENT_AGE.total_seconds()


T = TypeVar("T")


def shared(value: T) -> T:
    """A string a fact or record keeps for long, shared with every equal one (interned): the worker
    parses events without the parser's cache for values (``crm_platform.dead_letters.CacheStrings``),
    so each event's channel or handoff name would otherwise be a string of its own, held per lead
    and per receipt. Anything but a ``str`` as it is."""
    return cast(T, intern(cast(str, value))) if type(value) is str else value


def epoch(moment: datetime) -> float:
    return moment.timestamp()


def _earliest(current: float | None, candidate: float) -> float:
    return candidate if current is None else min(current, candidate)


# The facts are slots classes (no ``__dict__``): the worker holds a LeadFacts for every lead it
# ever folded, 120 bytes each against 232 with a dict (docs/performance.md, fourteenth session,
# idle). Each ``with_`` builds the new facts positionally (the frozen class's own ``__init__``:
# as cheap as the copy of a ``__dict__`` was, a fold or two per replayed event).
@dataclass(frozen=True, slots=True)
class LeadFacts:
    captured_at: float | None = None  # earliest lead.captured with merged=false
    capture_channel: str | None = None  # channel of that capture
    qualified_at: tuple[float, ...] = ()  # lead.qualified times, ascending, most recent kept
    qualify_channel: str | None = None  # channel of the earliest qualification
    accepted_at: float | None = None  # earliest lead.verdict accepted
    answered_at: float | None = None  # latest lead.verdict of any kind (sales' human answer)
    deal_ids: tuple[str, ...] = ()  # deals won from this lead (for channel attribution)

    @property
    def channel(self) -> str | None:
        """The lead's source channel: where it was captured, else where it qualified."""
        return self.capture_channel or self.qualify_channel

    def with_capture(self, at: float, channel: str) -> LeadFacts:
        if self.captured_at is not None and self.captured_at < at:
            return self
        if self.captured_at == at and self.capture_channel is not None:
            channel = min(self.capture_channel, channel)  # same instant: any fixed choice
        return LeadFacts(
            at,
            channel,
            self.qualified_at,
            self.qualify_channel,
            self.accepted_at,
            self.answered_at,
            self.deal_ids,
        )

    def with_qualification(self, at: float, channel: str) -> LeadFacts:
        times = tuple(sorted({*self.qualified_at, at}))[-MAX_QUALIFICATIONS:]
        first = self.qualified_at[0] if self.qualified_at else None
        qualify_channel = self.qualify_channel
        if first is None or at < first:
            qualify_channel = channel
        elif at == first and qualify_channel is not None:
            qualify_channel = min(qualify_channel, channel)
        return LeadFacts(
            self.captured_at,
            self.capture_channel,
            times,
            qualify_channel,
            self.accepted_at,
            self.answered_at,
            self.deal_ids,
        )

    def with_acceptance(self, at: float) -> LeadFacts:
        return LeadFacts(
            self.captured_at,
            self.capture_channel,
            self.qualified_at,
            self.qualify_channel,
            _earliest(self.accepted_at, at),
            self.answered_at,
            self.deal_ids,
        )

    def with_verdict(self, at: float) -> LeadFacts:
        """Sales answered (accepted, rejected or recycled): the latest answer is kept."""
        if self.answered_at is not None and self.answered_at >= at:
            return self
        return LeadFacts(
            self.captured_at,
            self.capture_channel,
            self.qualified_at,
            self.qualify_channel,
            self.accepted_at,
            at,
            self.deal_ids,
        )

    def with_deal(self, deal_id: str) -> LeadFacts:
        if deal_id in self.deal_ids:
            return self
        deal_ids = tuple(sorted({*self.deal_ids, deal_id}))
        return LeadFacts(
            self.captured_at,
            self.capture_channel,
            self.qualified_at,
            self.qualify_channel,
            self.accepted_at,
            self.answered_at,
            deal_ids,
        )

    def merged(self, other: LeadFacts) -> LeadFacts:
        """Everything either knows, as if both facts' events had been applied here."""
        out = self
        if other.captured_at is not None and other.capture_channel is not None:
            out = out.with_capture(other.captured_at, other.capture_channel)
        if other.qualified_at:
            # The earliest time first, with its channel: later ones cannot change the channel.
            channel = other.qualify_channel or ""
            for at in other.qualified_at:
                out = out.with_qualification(at, channel)
        if other.accepted_at is not None:
            out = out.with_acceptance(other.accepted_at)
        if other.answered_at is not None:
            out = out.with_verdict(other.answered_at)
        for deal_id in other.deal_ids:
            out = out.with_deal(deal_id)
        return out

    def business_latency(self) -> float | None:
        """Handed off (qualified) -> sales' first human answer to it (a verdict of any kind:
        accepted, rejected or recycled), in seconds.

        Pairs the latest verdict with the latest qualification not after it (a recycled
        lead is qualified again and answered again); never negative (clock skew is clamped).
        """
        if self.answered_at is None or not self.qualified_at:
            return None
        before = [t for t in self.qualified_at if t <= self.answered_at]
        start = before[-1] if before else self.qualified_at[0]
        return max(0.0, self.answered_at - start)

    def to_json(self) -> LeadFactsJson:
        return {
            "captured_at": self.captured_at,
            "capture_channel": self.capture_channel,
            "qualified_at": list(self.qualified_at),
            "qualify_channel": self.qualify_channel,
            "accepted_at": self.accepted_at,
            "answered_at": self.answered_at,
            "deal_ids": list(self.deal_ids),
        }

    @classmethod
    def from_json(cls, doc: LeadFactsJson | LeadFacts | None) -> LeadFacts:
        if isinstance(doc, LeadFacts):
            return doc  # a table's own value (frozen: shared as it is)
        if not doc:
            return cls()
        return cls(
            captured_at=doc.get("captured_at"),
            capture_channel=doc.get("capture_channel"),
            qualified_at=tuple(doc.get("qualified_at") or ()),
            qualify_channel=doc.get("qualify_channel"),
            accepted_at=doc.get("accepted_at"),
            # Facts stored before answered_at existed knew only the acceptance.
            answered_at=doc.get("answered_at", doc.get("accepted_at")),
            deal_ids=tuple(doc.get("deal_ids") or ()),
        )


@dataclass(frozen=True, slots=True)
class DealFacts:
    won_at: float | None = None  # earliest deal.won
    lead_id: str | None = None  # the lead the deal came from (deal.won carries it)
    onboarded_at: float | None = None  # earliest account.onboarding_started for the deal
    # Earliest account.onboarding_step_completed for the deal: the CSM's first onboarding step,
    # what ends deal-won's business latency (onboarding_started is automatic, not a human's).
    first_step_at: float | None = None

    def with_win(self, at: float, lead_id: str | None) -> DealFacts:
        lead = self.lead_id if self.lead_id is not None else lead_id
        if self.lead_id is not None and lead_id is not None and self.lead_id != lead_id:
            lead = min(self.lead_id, lead_id)  # conflicting producers: any fixed choice
        return DealFacts(_earliest(self.won_at, at), lead, self.onboarded_at, self.first_step_at)

    def with_onboarding(self, at: float) -> DealFacts:
        return DealFacts(self.won_at, self.lead_id, _earliest(self.onboarded_at, at), self.first_step_at)

    def with_first_step(self, at: float) -> DealFacts:
        return DealFacts(self.won_at, self.lead_id, self.onboarded_at, _earliest(self.first_step_at, at))

    def merged(self, other: DealFacts) -> DealFacts:
        """Everything either knows, as if both facts' events had been applied here."""
        out = self
        if other.won_at is not None:
            out = out.with_win(other.won_at, other.lead_id)
        if other.onboarded_at is not None:
            out = out.with_onboarding(other.onboarded_at)
        if other.first_step_at is not None:
            out = out.with_first_step(other.first_step_at)
        return out

    def business_latency(self) -> float | None:
        """Deal won -> the CSM's first onboarding step, in seconds (not the automatic start)."""
        if self.won_at is None or self.first_step_at is None:
            return None
        return max(0.0, self.first_step_at - self.won_at)

    def to_json(self) -> DealFactsJson:
        return {
            "won_at": self.won_at,
            "lead_id": self.lead_id,
            "onboarded_at": self.onboarded_at,
            "first_step_at": self.first_step_at,
        }

    @classmethod
    def from_json(cls, doc: DealFactsJson | DealFacts | None) -> DealFacts:
        if isinstance(doc, DealFacts):
            return doc
        if not doc:
            return cls()
        return cls(
            won_at=doc.get("won_at"),
            lead_id=doc.get("lead_id"),
            onboarded_at=doc.get("onboarded_at"),
            first_step_at=doc.get("first_step_at"),
        )


def plausible_latency(seconds: float) -> bool:
    """A latency a real handoff can have: finite, not negative beyond the contracts' clock-skew
    allowance, not longer than the oldest plausible event (``crm_contracts.envelope``)."""
    return math.isfinite(seconds) and -MAX_CLOCK_SKEW_SECONDS <= seconds <= MAX_EVENT_AGE_SECONDS


@dataclass(frozen=True, slots=True)
class ReceiptFact:
    """One handoff's transport latency, keyed by the handoff event's id."""

    handoff: str
    latency: float
    at: float | None = None  # when the receiver stored it (epoch seconds); None in older facts

    def merged(self, other: ReceiptFact) -> ReceiptFact:
        """Two receipts for one handoff event: the first store is the real one (min)."""
        first, second = (
            (other, self) if (other.latency, other.handoff) < (self.latency, self.handoff) else (self, other)
        )
        if first.at is None and second.at is not None:
            return ReceiptFact(first.handoff, first.latency, second.at)
        return first

    def to_json(self) -> ReceiptJson:
        doc: ReceiptJson = {"handoff": self.handoff, "latency": self.latency}
        if self.at is not None:
            doc["at"] = self.at
        return doc

    @classmethod
    def from_json(cls, doc: ReceiptJson | ReceiptFact | None) -> ReceiptFact | None:
        if isinstance(doc, ReceiptFact):
            return doc
        if not doc:
            return None
        at = doc.get("at")
        return cls(
            handoff=str(doc["handoff"]), latency=float(doc["latency"]), at=None if at is None else float(at)
        )


# The facts as JSON documents (the faust tables' values). A document read back from a
# changelog may be anything: the engine reads it through ``from_json`` and skips what
# does not parse.


class LeadFactsJson(TypedDict, total=False):
    captured_at: float | None
    capture_channel: str | None
    qualified_at: list[float]
    qualify_channel: str | None
    accepted_at: float | None
    answered_at: float | None
    deal_ids: list[str]


class DealFactsJson(TypedDict, total=False):
    won_at: float | None
    lead_id: str | None
    onboarded_at: float | None
    first_step_at: float | None


class ReceiptJson(TypedDict):
    handoff: str
    latency: float
    at: NotRequired[float]


Fact = LeadFacts | DealFacts | ReceiptFact
LeadValue = LeadFacts | LeadFactsJson  # what the leads table holds (module doc)
DealValue = DealFacts | DealFactsJson
ReceiptValue = ReceiptFact | ReceiptJson


def stored_json(value: object) -> object:
    """What a table's changelog stores for ``value``: a fact as its JSON document, anything
    else (a record, a document recovered from the changelog) as it is."""
    return value.to_json() if isinstance(value, LeadFacts | DealFacts | ReceiptFact) else value
