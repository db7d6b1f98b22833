"""Request and response bodies. Unknown fields are refused, so a typo is a 422 naming it."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from crm_contracts import utcnow
from crm_contracts.email import EmailStr
from crm_contracts.events.common import Behaviour
from crm_platform.custom_fields import FieldSet
from crm_platform.custom_fields_api import CustomIn, CustomOut, custom_out
from crm_platform.values import FiniteFloat, InRange, Int64, Timestamp
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    field_validator,
)

from leads.domain.leads import BehaviourRecord, Capture, Lead, LeadStatus, occurred_at_problem
from leads.domain.scoring import BehaviourRule, Reason, ScoringRules


class In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


def _trim_lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


def _trim(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


Channel = Annotated[
    str,
    BeforeValidator(_trim_lower),
    StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_.\-]*$"),
]
MetaKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_\-]{1,64}$")]
MetaValue = Annotated[
    Annotated[str, StringConstraints(max_length=1000)] | StrictBool | Int64 | FiniteFloat | None, InRange
]


# -- leads ---------------------------------------------------------------------------------


class ConsentIn(In):
    marketing_email: StrictBool = Field(description="May marketing email this person?")


class CaptureIn(In):
    name: str = Field(min_length=1, max_length=200)
    email: Annotated[EmailStr, BeforeValidator(_trim)] = Field(
        description="The lead's identity: trimmed and case-folded"
    )
    company: str | None = Field(default=None, max_length=200)
    source_channel: Channel = Field(description="e.g. web_form, webinar, import, partner_api")
    campaign: str | None = Field(default=None, max_length=200)
    consent: ConsentIn
    custom: CustomIn = None

    def to_capture(self, fields: FieldSet | None = None) -> Capture:
        """The capture, its custom values checked against ``fields`` (the lead's definitions)."""
        return Capture(
            email=str(self.email),
            name=self.name,
            source_channel=self.source_channel,
            marketing_email=self.consent.marketing_email,
            company=self.company,
            campaign=self.campaign,
            custom=fields.create(self.custom) if fields is not None else {},
        )


class ConsentOut(BaseModel):
    marketing_email: bool
    captured_at: datetime


class ReasonOut(BaseModel):
    behaviour: Behaviour
    count: int = Field(description="occurrences in the current scoring cycle")
    counted: int = Field(description="occurrences that score, after the cap")
    weight: float
    points: float

    @classmethod
    def of(cls, r: Reason) -> ReasonOut:
        return cls(behaviour=r.behaviour, count=r.count, counted=r.counted, weight=r.weight, points=r.points)


class TouchOut(BaseModel):
    channel: str
    campaign: str | None
    at: datetime


class VerdictOut(BaseModel):
    verdict: str
    reason_code: str | None
    decided_at: datetime | None


class LeadOut(BaseModel):
    id: str
    email: str
    name: str
    company: str | None
    source_channel: str = Field(description="The origin: the channel of the first capture")
    campaign: str | None
    owner: str | None = Field(
        default=None, description="The sales rep the lead is assigned to (user id), once sales assigned it"
    )
    consent: ConsentOut
    status: LeadStatus
    score: float
    threshold: float | None = Field(description="The threshold the score was last compared to")
    rules_version: int | None
    score_reasons: list[ReasonOut]
    behaviour_totals: dict[Behaviour, int] = Field(description="Lifetime occurrences")
    cycle_started_at: datetime | None = Field(
        description="Set when sales recycled the lead: only behaviour after it scores"
    )
    touches: list[TouchOut] = Field(description="Every capture of this person (latest 100)")
    touch_count: int
    last_behaviour_at: datetime | None
    qualified_at: datetime | None
    handoff_count: int = Field(description="How many times the lead was handed to sales")
    recycle_count: int
    verdict: VerdictOut | None
    created_at: datetime
    updated_at: datetime
    custom: CustomOut = Field(default_factory=dict)

    @classmethod
    def of(cls, lead: Lead) -> LeadOut:
        return cls(
            id=lead.id,
            email=lead.email,
            name=lead.name,
            company=lead.company,
            source_channel=lead.origin_channel,
            campaign=lead.campaign,
            owner=lead.assigned_rep,
            consent=ConsentOut(
                marketing_email=lead.consent.marketing_email, captured_at=lead.consent.captured_at
            ),
            status=lead.status,
            score=lead.score,
            threshold=lead.threshold,
            rules_version=lead.rules_version,
            score_reasons=[ReasonOut.of(r) for r in lead.score_reasons],
            behaviour_totals=dict(lead.behaviour_totals),
            cycle_started_at=lead.cycle_started_at,
            touches=[TouchOut(channel=t.channel, campaign=t.campaign, at=t.at) for t in lead.touches],
            touch_count=lead.touch_count,
            last_behaviour_at=lead.last_behaviour_at,
            qualified_at=lead.qualified_at,
            handoff_count=lead.handoff_count,
            recycle_count=lead.recycle_count,
            verdict=None
            if lead.verdict is None
            else VerdictOut(
                verdict=lead.verdict, reason_code=lead.verdict_reason_code, decided_at=lead.verdict_at
            ),
            created_at=lead.created_at,
            updated_at=lead.updated_at,
            custom=custom_out(lead.custom),
        )


class CaptureOut(BaseModel):
    merged: bool = Field(description="True: the email matched an existing lead, which was updated")
    lead: LeadOut


MAX_BULK_LEADS = 1000


class LeadEditIn(In):
    """Only the fields given change; the email (the lead's identity and merge key) cannot."""

    name: str | None = Field(default=None, min_length=1, max_length=200)
    company: str | None = Field(default=None, max_length=200, description="blank clears it")
    campaign: str | None = Field(default=None, max_length=200, description="blank clears it")
    consent: ConsentIn | None = None
    custom: CustomIn = None


class BulkCaptureIn(In):
    leads: list[CaptureIn] = Field(
        min_length=1,
        max_length=MAX_BULK_LEADS,
        description=f"1-{MAX_BULK_LEADS} leads, captured in order as if sent one by one",
    )


class BulkCaptureOut(BaseModel):
    results: list[CaptureOut] = Field(description="One per lead sent, in the same order")


class CapturedOut(BaseModel):
    id: str = Field(description="The lead's id (the lead the email matched, when merged)")
    merged: bool = Field(description="True: the email matched an existing lead, which was updated")


class BulkCaptureMinimalOut(BaseModel):
    """``Prefer: return=minimal`` (RFC 7240): each capture's lead id and dedupe verdict only."""

    results: list[CapturedOut] = Field(description="One per lead sent, in the same order")


class LeadPageOut(BaseModel):
    items: list[LeadOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null at the end")


# -- behaviour -----------------------------------------------------------------------------


class BehaviourIn(In):
    behaviour: Behaviour
    occurred_at: Timestamp | None = Field(
        default=None, description="When it happened (default: now); RFC 3339 with a zone"
    )
    meta: dict[MetaKey, MetaValue] | None = Field(
        default=None, max_length=50, description="Flat details, e.g. {'url': '/pricing'}"
    )
    external_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="The tracker's id for this occurrence: a retry with it is not counted twice",
    )

    @field_validator("occurred_at")
    @classmethod
    def _not_in_future(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        problem = occurred_at_problem(value, utcnow())
        if problem is not None:
            raise ValueError(problem)
        return value


MAX_BULK_BEHAVIOURS = 1000


class BulkBehaviourIn(BehaviourIn):
    lead_id: str = Field(min_length=1, max_length=100, description="The lead it happened to")


class BulkBehavioursIn(In):
    behaviours: list[BulkBehaviourIn] = Field(
        min_length=1,
        max_length=MAX_BULK_BEHAVIOURS,
        description=f"1-{MAX_BULK_BEHAVIOURS} behaviours, recorded in order as if sent one by one",
    )


class BulkBehaviourOut(BaseModel):
    lead_id: str
    behaviour_id: str
    duplicate: bool = Field(description="The external_id was seen before (or earlier in the batch)")
    counted_in_score: bool
    qualified_now: bool = Field(description="This behaviour handed the lead to sales")
    score: float = Field(description="The lead's score right after this behaviour")
    status: str = Field(description="The lead's status right after this behaviour")


class BulkBehavioursOut(BaseModel):
    results: list[BulkBehaviourOut] = Field(description="One per behaviour sent, in the same order")


class BehaviourOut(BaseModel):
    behaviour_id: str
    duplicate: bool = Field(description="The external_id was seen before: nothing counted again")
    counted_in_score: bool = Field(
        description="False when it occurred before the lead was recycled (kept, not scored)"
    )
    qualified_now: bool = Field(description="This behaviour handed the lead to sales")
    lead: LeadOut


class BehaviourRecordOut(BaseModel):
    id: str
    behaviour: Behaviour
    occurred_at: datetime
    recorded_at: datetime
    meta: dict[str, Any]
    external_id: str | None
    counted_in_score: bool
    score_after: float
    rules_version: int
    recorded_by: str

    @classmethod
    def of(cls, record: BehaviourRecord) -> BehaviourRecordOut:
        return cls(
            id=record.id,
            behaviour=record.behaviour,
            occurred_at=record.occurred_at,
            recorded_at=record.recorded_at,
            meta=dict(record.meta),
            external_id=record.external_id,
            counted_in_score=record.in_cycle,
            score_after=record.score_after,
            rules_version=record.rules_version,
            recorded_by=record.recorded_by.username,
        )


class BehaviourListOut(BaseModel):
    items: list[BehaviourRecordOut]


# -- scoring rules -------------------------------------------------------------------------


class RuleIn(In):
    weight: float = Field(
        ge=0, le=1_000_000, allow_inf_nan=False, description="Points per counted occurrence"
    )
    cap: int | None = Field(
        default=None, ge=1, le=1_000_000, description="Occurrences counted at most (omit: no cap)"
    )

    def to_domain(self) -> BehaviourRule:
        return BehaviourRule(self.weight, self.cap)


class RuleSetIn(In):
    """One rule per behaviour; all are required (a PUT replaces the whole set)."""

    page_view: RuleIn
    email_open: RuleIn
    form_submit: RuleIn
    trial_signup: RuleIn

    def to_domain(self) -> dict[Behaviour, BehaviourRule]:
        return {b: getattr(self, b.value).to_domain() for b in Behaviour}


class RulesIn(In):
    rules: RuleSetIn
    threshold: float = Field(
        gt=0, le=1_000_000_000, allow_inf_nan=False, description="Score that qualifies a lead"
    )
    note: str | None = Field(default=None, max_length=500, description="Why it changed")
    expected_version: int | None = Field(
        default=None,
        ge=1,
        description="Optimistic lock: refuse (409) if the current version is not this one",
    )


class RulesPreviewIn(In):
    """A draft of the rules, to preview before saving it (nothing is stored)."""

    rules: RuleSetIn
    threshold: float = Field(
        gt=0, le=1_000_000_000, allow_inf_nan=False, description="Score that would qualify a lead"
    )


class RulesPreviewOut(BaseModel):
    current_version: int = Field(description="The rules the draft is compared with")
    leads: int = Field(description="Leads read: new, nurturing or recycled (a score can still qualify them)")
    qualify_current: int = Field(description="Of them, at or over the threshold with the current rules")
    qualify_draft: int = Field(description="Of them, at or over the draft's threshold with the draft")
    newly: int = Field(
        description="Only with the draft: they qualify at their next behaviour once it is saved"
    )
    no_longer: int = Field(description="With the current rules, not with the draft")
    truncated: bool = Field(description="True when more leads were open than a preview reads (newest first)")


class RuleOut(BaseModel):
    weight: float
    cap: int | None


class AuthorOut(BaseModel):
    user_id: str
    username: str


class RulesOut(BaseModel):
    version: int
    rules: dict[Behaviour, RuleOut]
    threshold: float
    changed_by: AuthorOut
    changed_at: datetime | None = Field(description="null for the built-in defaults (version 1)")
    note: str | None

    @classmethod
    def of(cls, rules: ScoringRules) -> RulesOut:
        return cls(
            version=rules.version,
            rules={b: RuleOut(weight=r.weight, cap=r.cap) for b, r in rules.rules.items()},
            threshold=rules.threshold,
            changed_by=AuthorOut(user_id=rules.changed_by.user_id, username=rules.changed_by.username),
            changed_at=rules.changed_at,
            note=rules.note,
        )


class RulesHistoryOut(BaseModel):
    items: list[RulesOut]


# -- imports -------------------------------------------------------------------------------


class ImportDefaultsIn(In):
    source_channel: Channel = Field(default="import", description="for rows without one")
    marketing_email: StrictBool = Field(default=False, description="consent for rows without one")
    campaign: str | None = Field(default=None, max_length=200)
