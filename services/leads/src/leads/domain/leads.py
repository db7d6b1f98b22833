"""The lead: capture and duplicate merge, behaviour and qualification, sales' verdict.

Status flow::

    new --behaviour--> nurturing --score >= threshold--> qualified (handed to sales, once)
    qualified --verdict--> accepted | rejected | recycled
    recycled --new behaviour--> nurturing --score >= threshold--> qualified (handed off again)

Accepted and rejected are final for marketing: behaviour is still recorded and
scored, but the lead is never handed off again. A recycled lead starts a new
scoring cycle: its score restarts from zero and only behaviour that occurred
after the verdict counts, so "crossing the threshold again" needs new
engagement, not one more page view on an old score. Lifetime behaviour totals
are kept for the behaviour summary sales receives.

Everything here is pure: no clock (callers pass ``now``), no I/O. A :class:`Lead` is
immutable: its methods return the changed lead (and the events the change causes)
and the handler saves it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TypeVar

from crm_contracts import Event
from crm_contracts.email import EmailStr
from crm_contracts.events.common import Behaviour, Contact, ScoreReason
from crm_contracts.events.common import Consent as ConsentV1
from crm_contracts.events.leads import (
    BehaviourRecordedV1,
    EditedField,
    LeadCapturedV2,
    LeadEditedV1,
    LeadQualifiedV1,
    LeadStatusChangedV1,
)
from crm_platform.actor import Actor
from crm_platform.custom_fields import FieldSet, RecordType, StoredValue, to_extensions
from crm_platform.errors import RuleViolation
from pydantic import BaseModel

from leads.domain.scoring import Reason, Score, ScoringRules, score

MAX_TOUCHES_KEPT = 100
_M = TypeVar("_M", bound=BaseModel)
MAX_CLOCK_SKEW = timedelta(minutes=5)
NO_CUSTOM_FIELDS = FieldSet(RecordType.LEAD)


class LeadStatus(StrEnum):
    NEW = "new"
    NURTURING = "nurturing"
    QUALIFIED = "qualified"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    RECYCLED = "recycled"


TRANSITIONS: Mapping[LeadStatus, frozenset[LeadStatus]] = {
    LeadStatus.NEW: frozenset({LeadStatus.NURTURING}),
    LeadStatus.NURTURING: frozenset({LeadStatus.QUALIFIED}),
    LeadStatus.QUALIFIED: frozenset({LeadStatus.ACCEPTED, LeadStatus.REJECTED, LeadStatus.RECYCLED}),
    LeadStatus.RECYCLED: frozenset({LeadStatus.NURTURING}),
    LeadStatus.ACCEPTED: frozenset(),
    LeadStatus.REJECTED: frozenset(),
}

# Sales' verdict -> the status it puts a qualified lead in.
VERDICT_STATUS: Mapping[str, LeadStatus] = {
    "accepted": LeadStatus.ACCEPTED,
    "rejected": LeadStatus.REJECTED,
    "recycled": LeadStatus.RECYCLED,
}


class InvalidTransition(ValueError):
    def __init__(self, current: LeadStatus, target: LeadStatus) -> None:
        super().__init__(f"a lead cannot go from '{current}' to '{target}'")
        self.current = current
        self.target = target


def can_transition(current: LeadStatus, target: LeadStatus) -> bool:
    return target in TRANSITIONS[current]


def transition(current: LeadStatus, target: LeadStatus) -> LeadStatus:
    if not can_transition(current, target):
        raise InvalidTransition(current, target)
    return target


def normalize_email(raw: str) -> str:
    """The identity of a lead: the email, trimmed and case-folded."""
    return raw.strip().lower()


def occurred_at_problem(occurred_at: datetime, now: datetime) -> str | None:
    """Why a behaviour's time is unacceptable, or None. Only the future (beyond skew) is."""
    if occurred_at > now + MAX_CLOCK_SKEW:
        return f"is in the future (more than {int(MAX_CLOCK_SKEW.total_seconds() // 60)} min ahead)"
    return None


@dataclass(frozen=True)
class Consent:
    marketing_email: bool
    captured_at: datetime


@dataclass(frozen=True)
class Touch:
    channel: str
    campaign: str | None
    at: datetime


@dataclass(frozen=True)
class Capture:
    """One capture of a lead (a form, an import row, an API call), already validated."""

    email: str
    name: str
    source_channel: str
    marketing_email: bool
    company: str | None = None
    campaign: str | None = None
    custom: Mapping[str, StoredValue] = field(default_factory=dict)  # checked by FieldSet.create


@dataclass(frozen=True)
class LeadEdit:
    """A correction of a lead's details by marketing (``PATCH /leads/{id}``); ``None`` keeps a field.

    The email is the lead's identity and merge key (capture merges by it): not editable.
    ``company`` and ``campaign`` given as blank clear the field. ``custom`` sets the custom
    fields it names (``None`` as a value clears one), checked against the definitions.
    """

    name: str | None = None
    company: str | None = None
    campaign: str | None = None
    marketing_email: bool | None = None
    custom: Mapping[str, object] | None = None

    def is_empty(self) -> bool:
        fields = (self.name, self.company, self.campaign, self.marketing_email)
        return all(v is None for v in fields) and not self.custom


@dataclass(frozen=True)
class Lead:
    id: str
    email: str
    name: str
    company: str | None
    origin_channel: str
    campaign: str | None
    consent: Consent
    status: LeadStatus
    created_at: datetime
    updated_at: datetime
    touches: tuple[Touch, ...] = ()
    touch_count: int = 1
    behaviour_totals: Mapping[Behaviour, int] = field(default_factory=dict)
    cycle_counts: Mapping[Behaviour, int] = field(default_factory=dict)
    cycle_started_at: datetime | None = None
    score: float = 0.0
    score_reasons: tuple[Reason, ...] = ()
    rules_version: int | None = None
    threshold: float | None = None
    last_behaviour_at: datetime | None = None
    qualified_at: datetime | None = None
    handoff_count: int = 0
    recycle_count: int = 0
    verdict: str | None = None
    verdict_reason_code: str | None = None
    verdict_at: datetime | None = None
    custom: Mapping[str, StoredValue] = field(default_factory=dict)
    # The sales rep the lead is assigned to (sales.lead_assigned), and when sales assigned it.
    assigned_rep: str | None = None
    assigned_at: datetime | None = None

    @classmethod
    def new(cls, lead_id: str, capture: Capture, now: datetime) -> Lead:
        """A captured person's new lead. Its fields are set as the dataclass's ``__init__``
        sets them, in one update of the new instance's ``__dict__`` instead of a frozen
        ``object.__setattr__`` call per field (29 of them: 6.0 -> 3.0 us per lead, every
        bulk-captured and imported lead; docs/performance.md, eighteenth session, bulk)."""
        lead = object.__new__(cls)
        state = lead.__dict__
        state.update(_NEW_LEAD)  # every field, in order, at its default (the required ones below)
        state.update(
            id=lead_id,
            email=normalize_email(capture.email),
            name=capture.name,
            company=_filled(capture.company),
            origin_channel=capture.source_channel,
            campaign=_filled(capture.campaign),
            consent=Consent(capture.marketing_email, now),
            status=LeadStatus.NEW,
            created_at=now,
            updated_at=now,
            touches=(Touch(capture.source_channel, capture.campaign, now),),
            behaviour_totals={},
            cycle_counts={},
            custom=dict(capture.custom),
        )
        return lead

    def merge(self, capture: Capture, now: datetime) -> Lead:
        """The same person captured again: one lead, never two.

        - empty fields are filled from the new capture, filled ones are kept;
        - the first source channel stays the origin; the new capture is a touch;
        - consent follows the person's latest statement (an opt-out must win, and a
          fresh opt-in is just as explicit);
        - the status is untouched (a capture is not behaviour);
        - custom fields the lead has no value for are filled from the capture, like the others.
        """
        if normalize_email(capture.email) != self.email:
            raise ValueError("merge needs the same email")
        touches = (*self.touches, Touch(capture.source_channel, capture.campaign, now))
        return dataclasses.replace(
            self,
            name=capture.name if _blank(self.name) else self.name,
            company=self.company if not _blank(self.company) else _filled(capture.company),
            campaign=self.campaign if not _blank(self.campaign) else _filled(capture.campaign),
            consent=Consent(capture.marketing_email, now),
            touches=touches[-MAX_TOUCHES_KEPT:],
            touch_count=self.touch_count + 1,
            updated_at=now,
            custom={**capture.custom, **self.custom},
        )

    def edit(
        self, change: LeadEdit, now: datetime, by: Actor, fields: FieldSet = NO_CUSTOM_FIELDS
    ) -> EditOutcome:
        """The lead with ``change`` applied (its field history is the audit log's, crm_platform.audit).

        A consent change is a new statement by the person, so it is dated ``now``. When a value
        actually changed, ``lead.edited`` names the changed fields (never their values: no
        personal data in the log) and who changed them: marketing's human step on the lead.
        """
        if change.is_empty():
            raise RuleViolation("nothing to change: give name, company, campaign, consent or custom")
        if change.name is not None and _blank(change.name):
            raise RuleViolation("name must not be blank", field="body.name")
        consent = self.consent
        custom = fields.edit(self.custom, change.custom) if change.custom else self.custom
        if change.marketing_email is not None and change.marketing_email != consent.marketing_email:
            consent = Consent(change.marketing_email, now)
        edited = dataclasses.replace(
            self,
            name=change.name if change.name is not None else self.name,
            company=_filled(change.company) if change.company is not None else self.company,
            campaign=_filled(change.campaign) if change.campaign is not None else self.campaign,
            consent=consent,
            updated_at=now,
            custom=custom,
        )
        changed = [
            name
            for name, before, after in (
                (EditedField.NAME, self.name, edited.name),
                (EditedField.COMPANY, self.company, edited.company),
                (EditedField.CAMPAIGN, self.campaign, edited.campaign),
                (EditedField.CONSENT, self.consent.marketing_email, edited.consent.marketing_email),
            )
            if before != after
        ]
        custom_changed = sorted(k for k in {*self.custom, *custom} if self.custom.get(k) != custom.get(k))
        if not changed and not custom_changed:
            return EditOutcome(self, ())
        event = LeadEditedV1(
            lead_id=self.id,
            changed_fields=changed,
            changed_custom_fields=custom_changed,
            edited_by=by.user_id,
            edited_by_roles=sorted(by.roles),
            edited_at=now,
            source_channel=self.origin_channel,
        )
        return EditOutcome(edited, (*changed, *(f"custom.{k}" for k in custom_changed)), (event,))

    def record_behaviour(
        self, behaviour: Behaviour, occurred_at: datetime, rules: ScoringRules, now: datetime
    ) -> BehaviourOutcome:
        """Count the behaviour, re-score with the current rules, qualify on crossing the threshold."""
        in_cycle = self.cycle_started_at is None or occurred_at >= self.cycle_started_at
        cycle = _plus_one(self.cycle_counts, behaviour) if in_cycle else dict(self.cycle_counts)
        rescored = score(cycle, rules)
        status = self.status
        if in_cycle and status in (LeadStatus.NEW, LeadStatus.RECYCLED):
            status = transition(status, LeadStatus.NURTURING)
        qualified = status == LeadStatus.NURTURING and rescored.qualifies
        if qualified:
            status = transition(status, LeadStatus.QUALIFIED)
        last = self.last_behaviour_at
        updated = dataclasses.replace(
            self,
            status=status,
            behaviour_totals=_plus_one(self.behaviour_totals, behaviour),
            cycle_counts=cycle,
            score=rescored.total,
            score_reasons=rescored.reasons,
            rules_version=rescored.rules_version,
            threshold=rescored.threshold,
            last_behaviour_at=occurred_at if last is None or occurred_at > last else last,
            qualified_at=now if qualified else self.qualified_at,
            handoff_count=self.handoff_count + (1 if qualified else 0),
            updated_at=now,
        )
        recorded = BehaviourRecordedV1(
            lead_id=self.id, behaviour=behaviour, score=updated.score, source_channel=updated.origin_channel
        )
        events: tuple[Event, ...] = (recorded, updated.qualified_event()) if qualified else (recorded,)
        return BehaviourOutcome(updated, rescored, in_cycle, qualified, events)

    def assign(self, rep: str, assigned_at: datetime) -> Lead | None:
        """Sales assigned the lead to ``rep`` at ``assigned_at``; None when the lead already holds
        that assignment or a later one (a re-delivered or stale copy never undoes a reassignment).

        The lead's ``updated_at`` is marketing's own changes: an assignment leaves it alone.
        """
        if self.assigned_at is not None and assigned_at <= self.assigned_at:
            return None
        return dataclasses.replace(self, assigned_rep=rep, assigned_at=assigned_at)

    def apply_verdict(
        self, verdict: str, reason_code: str | None, decided_at: datetime, now: datetime
    ) -> VerdictOutcome:
        """Sales' verdict (decided at ``decided_at``) on a lead it was handed.

        Only a lead in 'qualified' takes a verdict. Any other status means the verdict
        is late, repeated or about a lead sales was never handed: it is ignored
        (the caller logs it) rather than rewriting history.
        """
        target = VERDICT_STATUS.get(verdict)
        if target is None:
            raise ValueError(f"unknown verdict '{verdict}'")
        if self.status != LeadStatus.QUALIFIED:
            return VerdictOutcome(self, False, f"lead is '{self.status}', not 'qualified'")
        updated = dataclasses.replace(
            self,
            status=transition(self.status, target),
            verdict=verdict,
            verdict_reason_code=reason_code,
            verdict_at=decided_at,
            updated_at=now,
        )
        if target == LeadStatus.RECYCLED:
            updated = dataclasses.replace(
                updated,
                cycle_counts={},
                cycle_started_at=decided_at,
                score=0.0,
                score_reasons=(),
                recycle_count=self.recycle_count + 1,
            )
        changed = LeadStatusChangedV1(
            lead_id=updated.id,
            status=updated.status.value,
            reason_code=updated.verdict_reason_code,
            source_channel=updated.origin_channel,
        )
        return VerdictOutcome(updated, True, events=(changed,))

    def behaviour_summary(self) -> dict[Behaviour, int]:
        """Lifetime occurrences per behaviour (what sales sees in the handoff)."""
        return {b: self.behaviour_totals[b] for b in Behaviour if self.behaviour_totals.get(b, 0) > 0}

    def captured_event(
        self, capture: Capture, merged: bool, fields: FieldSet = NO_CUSTOM_FIELDS
    ) -> LeadCapturedV2:
        """Describes the lead after this capture; channel and campaign are this capture's touch;
        its custom fields that ``fields`` defines, text left out (the extension map)."""
        custom = to_extensions(fields, self.custom) if self.custom else {}
        return _captured_as_validated(self, capture, merged, custom) or LeadCapturedV2(
            lead_id=self.id,
            email=self.email,
            name=self.name,
            company=self.company or "",
            source_channel=capture.source_channel,
            campaign=capture.campaign,
            consent=_consent_v1(self.consent),
            merged=merged,
            custom=custom,
        )

    def qualified_event(self) -> LeadQualifiedV1:
        """The handoff to sales: who, why (score and reasons), from where, and consent."""
        if self.qualified_at is None or self.threshold is None:
            raise ValueError(f"lead {self.id} is not qualified")
        return LeadQualifiedV1(
            lead_id=self.id,
            contact=Contact(name=self.name, email=self.email),
            company=self.company or "",
            score=self.score,
            threshold=self.threshold,
            score_reasons=[
                ScoreReason(behaviour=r.behaviour, count=r.count, points=r.points) for r in self.score_reasons
            ],
            source_channel=self.origin_channel,
            campaign=self.campaign,
            behaviour_summary=self.behaviour_summary(),
            consent=_consent_v1(self.consent),
            qualified_at=self.qualified_at,
        )


# Lead.new's starting point: every field of a lead in the class's order, at its default; the
# fields without one (and those made by a factory: each lead its own) are set by Lead.new, and
# test_a_new_lead_is_the_lead_its_constructor_makes checks that none is left at this stand-in.
_UNSET = object()
_NEW_LEAD: dict[str, object] = {
    f.name: _UNSET if f.default is dataclasses.MISSING else f.default for f in dataclasses.fields(Lead)
}


def _blank(value: str | None) -> bool:
    return value is None or not value.strip()


def _filled(value: str | None) -> str | None:
    return None if _blank(value) else value


@dataclass(frozen=True)
class CaptureOutcome:
    lead: Lead
    merged: bool  # True: the email matched a lead, which absorbed this capture
    events: tuple[Event, ...]


def capture(
    existing: Lead | None,
    new_id: str,
    capture: Capture,
    now: datetime,
    fields: FieldSet = NO_CUSTOM_FIELDS,
) -> CaptureOutcome:
    """A capture: a new lead, or ``existing`` (the lead with this email) merging it."""
    lead = existing.merge(capture, now) if existing is not None else Lead.new(new_id, capture, now)
    merged = existing is not None
    return CaptureOutcome(lead, merged, (lead.captured_event(capture, merged, fields),))


@dataclass(frozen=True)
class BatchCaptureOutcome:
    outcomes: tuple[CaptureOutcome, ...]  # one per capture, in the batch's order
    new: tuple[Lead, ...]  # leads the batch created (each in its state after the whole batch)
    merged: tuple[Lead, ...]  # known leads the batch changed (likewise)


def capture_batch(
    known: Mapping[str, Lead],
    captures: Sequence[Capture],
    new_id: Callable[[], str],
    now: datetime,
    fields: FieldSet = NO_CUSTOM_FIELDS,
) -> BatchCaptureOutcome:
    """Many captures with exactly the effects of :func:`capture` applied one by one, in order.

    ``known`` holds the stored leads with the batch's emails (by normalized email). A
    capture merges into the lead with its email, whether stored or created earlier in
    this batch, and each capture has its own ``lead.captured``.
    """
    leads = dict(known)
    outcomes = []
    for each in captures:
        email = normalize_email(each.email)
        existing = leads.get(email)
        outcome = capture(existing, new_id() if existing is None else existing.id, each, now, fields)
        leads[email] = outcome.lead
        outcomes.append(outcome)
    changed = {normalize_email(c.email) for c in captures}
    return BatchCaptureOutcome(
        tuple(outcomes),
        new=tuple(lead for email, lead in leads.items() if email in changed and email not in known),
        merged=tuple(lead for email, lead in leads.items() if email in changed and email in known),
    )


@dataclass(frozen=True)
class BehaviourOutcome:
    lead: Lead
    score: Score
    in_cycle: bool  # False: occurred before the lead was recycled; kept but not scored
    qualified: bool  # True: this behaviour hands the lead to sales (emit the handoff)
    events: tuple[Event, ...] = ()


@dataclass(frozen=True)
class EditOutcome:
    """An edit's result: the lead (unchanged when every value given was already there), the
    fields whose value changed, and ``lead.edited`` when any did."""

    lead: Lead
    changed: tuple[str, ...]  # EditedField values, then ``custom.<key>`` per custom field
    events: tuple[Event, ...] = ()


@dataclass(frozen=True)
class VerdictOutcome:
    lead: Lead
    applied: bool
    ignored_because: str | None = None
    events: tuple[Event, ...] = ()


def _plus_one(counts: Mapping[Behaviour, int], behaviour: Behaviour) -> dict[Behaviour, int]:
    out = dict(counts)
    out[behaviour] = out.get(behaviour, 0) + 1
    return out


def _consent_v1(consent: Consent) -> ConsentV1:
    return ConsentV1(marketing_email=consent.marketing_email, captured_at=consent.captured_at)


_setattr = object.__setattr__
_CAPTURED_FIELDS = tuple(LeadCapturedV2.model_fields)
_CONSENT_FIELDS = tuple(ConsentV1.model_fields)
# Built field by field only while the models are what :func:`_captured_as_validated` was written
# for: these fields in this order, no alias, no post-init, no validator of the model's own.
_CAPTURED_PLAIN = (
    _CAPTURED_FIELDS
    == ("lead_id", "email", "name", "company", "source_channel", "campaign", "consent", "merged", "custom")
    and _CONSENT_FIELDS == ("marketing_email", "captured_at")
    and all(
        m.__pydantic_post_init__ is None
        and not m.__pydantic_decorators__.model_validators
        and not m.__pydantic_decorators__.field_validators
        and all(f.alias is None and f.validation_alias is None for f in m.model_fields.values())
        for m in (LeadCapturedV2, ConsentV1)
    )
)


def _as_validated(model: type[_M], values: dict[str, object], fields: frozenset[str]) -> _M:
    """``model(**values)`` for values its validation keeps as they are (every field given, in
    order), without running it: what ``model_construct`` keeps, without its walk over aliases
    and defaults."""
    built = model.__new__(model)
    _setattr(built, "__dict__", values)
    _setattr(built, "__pydantic_fields_set__", set(fields))
    _setattr(built, "__pydantic_extra__", None)
    _setattr(built, "__pydantic_private__", None)
    return built


_ALL_CAPTURED, _ALL_CONSENT = frozenset(_CAPTURED_FIELDS), frozenset(_CONSENT_FIELDS)


def _captured_as_validated(
    lead: Lead, capture: Capture, merged: bool, custom: Mapping[str, object]
) -> LeadCapturedV2 | None:
    """``lead.captured`` v2 as :meth:`Lead.captured_event`'s model validates it, without the
    validation where each value is one it keeps as it is: every text a plain ``str`` (pydantic
    makes a ``StrEnum`` member its plain value), the e-mail as ``EmailStr`` normalises it (its
    own check, cached), ``merged`` and the consent's flag a ``bool``, the consent's time an aware
    ``datetime``, no custom values (their bounds are the model's to check). The model's
    validation was about a quarter of a bulk-captured or imported lead's domain step
    (docs/performance.md, "Twenty-fourth session, bulk"). None: validate (the model says what
    is wrong, as before)."""
    consent, campaign, company = lead.consent, capture.campaign, lead.company or ""
    at = consent.captured_at
    if not (
        _CAPTURED_PLAIN
        and not custom
        and type(lead.id) is str
        and type(lead.email) is str
        and type(lead.name) is str
        and type(company) is str
        and type(capture.source_channel) is str
        and (campaign is None or type(campaign) is str)
        and type(merged) is bool
        and type(consent.marketing_email) is bool
        and type(at) is datetime
        and at.utcoffset() is not None
    ):
        return None
    try:
        email = EmailStr._validate(lead.email)
    except ValueError:
        return None  # not an address: the model's validation says so
    if type(email) is not str:
        return None
    flag: dict[str, object] = {"marketing_email": consent.marketing_email, "captured_at": at}
    values: dict[str, object] = {
        "lead_id": lead.id,
        "email": email,
        "name": lead.name,
        "company": company,
        "source_channel": capture.source_channel,
        "campaign": campaign,
        "consent": _as_validated(ConsentV1, flag, _ALL_CONSENT),
        "merged": merged,
        "custom": {},
    }
    return _as_validated(LeadCapturedV2, values, _ALL_CAPTURED)


MetaValue = str | bool | int | float | None


@dataclass(frozen=True)
class BehaviourRecord:
    """One recorded behaviour occurrence, as it counted (or not) in the lead's score."""

    id: str
    lead_id: str
    behaviour: Behaviour
    occurred_at: datetime
    recorded_at: datetime
    recorded_by: Actor
    in_cycle: bool
    score_after: float
    rules_version: int
    qualified: bool
    meta: Mapping[str, MetaValue] = field(default_factory=dict)
    external_id: str | None = None

    @classmethod
    def of(
        cls,
        record_id: str,
        outcome: BehaviourOutcome,
        *,
        behaviour: Behaviour,
        occurred_at: datetime,
        by: Actor,
        meta: Mapping[str, MetaValue] | None,
        external_id: str | None,
    ) -> BehaviourRecord:
        return cls(
            id=record_id,
            lead_id=outcome.lead.id,
            behaviour=behaviour,
            occurred_at=occurred_at,
            recorded_at=outcome.lead.updated_at,
            recorded_by=by,
            in_cycle=outcome.in_cycle,
            score_after=outcome.lead.score,
            rules_version=outcome.score.rules_version,
            qualified=outcome.qualified,
            meta=dict(meta or {}),
            external_id=external_id,
        )


@dataclass(frozen=True)
class VerdictRecord:
    """Sales' verdict as received, applied or ignored (with why)."""

    id: str  # the verdict event's id
    lead_id: str
    verdict: str
    reason_code: str | None
    note: str | None
    decided_by: str
    opportunity_id: str | None
    decided_at: datetime
    received_at: datetime
    applied: bool
    ignored_because: str | None
    status_before: LeadStatus


@dataclass(frozen=True)
class BehaviourInput:
    """One behaviour of a batch (``occurred_at`` None: when the batch is recorded; ``by`` None:
    the batch's user, else this behaviour's own: one request's of a group commit)."""

    lead_id: str
    behaviour: Behaviour
    occurred_at: datetime | None = None
    meta: Mapping[str, MetaValue] | None = None
    external_id: str | None = None
    by: Actor | None = None


@dataclass(frozen=True)
class BehaviourBatchItem:
    lead: Lead  # the lead right after this behaviour
    behaviour_id: str
    duplicate: bool  # the same (lead, external_id) was recorded before, or earlier in the batch
    counted_in_score: bool
    qualified_now: bool
    events: tuple[Event, ...] = ()


@dataclass(frozen=True)
class BehaviourBatch:
    items: tuple[BehaviourBatchItem, ...]  # one per input, in the batch's order
    records: tuple[BehaviourRecord, ...]  # the records to store (duplicates have none)
    leads: tuple[Lead, ...]  # the leads the batch changed, each in its state after the batch


def record_batch(
    leads: Mapping[str, Lead],
    seen: Mapping[tuple[str, str], BehaviourRecord],
    inputs: Sequence[BehaviourInput],
    rules: ScoringRules,
    *,
    now: datetime,
    new_id: Callable[[], str],
    by: Actor | None = None,
) -> BehaviourBatch:
    """Many behaviours with exactly the effects of recording them one by one, in order.

    ``leads`` holds every lead the batch names (by id); ``seen`` the stored records of the
    batch's ``(lead id, external_id)`` pairs. A behaviour whose pair was recorded before,
    stored or earlier in this batch, is a duplicate: nothing counted again, as one by one.
    """
    current = dict(leads)
    known = dict(seen)
    items: list[BehaviourBatchItem] = []
    records: list[BehaviourRecord] = []
    for each in inputs:
        lead = current[each.lead_id]
        pair = (each.lead_id, each.external_id) if each.external_id is not None else None
        prior = known.get(pair) if pair is not None else None
        if prior is not None:
            items.append(BehaviourBatchItem(lead, prior.id, True, prior.in_cycle, False))
            continue
        when = each.occurred_at if each.occurred_at is not None else now
        outcome = lead.record_behaviour(each.behaviour, when, rules, now)
        record = BehaviourRecord.of(
            new_id(),
            outcome,
            behaviour=each.behaviour,
            occurred_at=when,
            by=_by(each, by),
            meta=each.meta,
            external_id=each.external_id,
        )
        current[each.lead_id] = outcome.lead
        if pair is not None:
            known[pair] = record
        records.append(record)
        items.append(
            BehaviourBatchItem(
                outcome.lead, record.id, False, outcome.in_cycle, outcome.qualified, outcome.events
            )
        )
    changed = dict.fromkeys(r.lead_id for r in records)
    return BehaviourBatch(tuple(items), tuple(records), tuple(current[lead_id] for lead_id in changed))


def _by(each: BehaviourInput, batch_user: Actor | None) -> Actor:
    """Who recorded a behaviour of a batch: its own user (a group commit's request), else the batch's."""
    who = each.by or batch_user
    if who is None:
        raise ValueError("a behaviour of the batch has no user")
    return who
