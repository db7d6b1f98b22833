"""Request and response bodies. Unknown fields are refused, so a typo is a 422 naming it."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any

from crm_contracts import utcnow
from crm_contracts.events.common import Contact
from crm_contracts.events.leads import LeadQualifiedV1
from crm_contracts.events.sales import RejectReason, Verdict
from crm_platform.custom_fields_api import CustomIn, CustomOut, custom_out
from crm_platform.money import Amount, StoredAmount, plain_numbers
from crm_platform.values import Timestamp, custom_value
from pydantic import (
    AnyHttpUrl,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    EmailStr,
    Field,
    StrictBool,
    StringConstraints,
    model_validator,
)

from sales.domain.account import Account, DirectSource
from sales.domain.assignment import Rep, rotation, round_robin
from sales.domain.contact import Contact as SalesContact
from sales.domain.forecast import Forecast
from sales.domain.inbox import MAX_SLA_MINUTES, MIN_SLA_MINUTES, InboxItem, InboxStatus
from sales.domain.opportunity import (
    DEFAULT_CURRENCY,
    Activity,
    ActivityType,
    Opportunity,
    OpportunityStatus,
    flagged_commitments,
)
from sales.domain.pipeline import NAME_PATTERN, Pipeline
from sales.domain.review import MAX_COMMITMENT_THRESHOLD, CommitmentReview, ReviewPolicy

Doc = dict[str, Any]


class In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _upper(value: Any) -> Any:
    return value.strip().upper() if isinstance(value, str) else value


UserId = Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^[A-Za-z0-9._@\-]{1,100}$")]
DisplayName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
USER_ID_HELP = "A user id (the token's sub), as listed by the gateway's GET /users (admin); never a username"
Currency = Annotated[str, BeforeValidator(_upper), StringConstraints(pattern=r"^[A-Z]{3}$")]
Note = Annotated[str, StringConstraints(strip_whitespace=True, max_length=2000)]


# -- reps, config, pipeline -----------------------------------------------------------------


class RepIn(In):
    user_id: UserId = Field(description=USER_ID_HELP)
    name: DisplayName | None = Field(default=None, description="Display name, shown only; never an identity")
    active: StrictBool = True


class RosterIn(In):
    reps: list[RepIn] = Field(max_length=1000, description="The whole roster: reps not listed leave it")

    @model_validator(mode="after")
    def _unique(self) -> RosterIn:
        ids = [r.user_id for r in self.reps]
        duplicates = sorted({n for n in ids if ids.count(n) > 1})
        if duplicates:
            raise ValueError(f"user ids listed twice: {duplicates}")
        return self


class RepActiveIn(In):
    name: DisplayName | None = Field(default=None, description="Display name, shown only; never an identity")
    active: StrictBool


class RepOut(Out):
    user_id: str = Field(description="The rep's user id (the token's sub): what owners and checks use")
    name: str | None = Field(default=None, description="Display name, as the manager gave it")
    active: bool
    updated_at: datetime | None = None
    updated_by: str | None = Field(default=None, description="User id of who changed it")

    @classmethod
    def of(cls, rep: Rep) -> RepOut:
        return cls(
            user_id=rep.user_id,
            name=rep.name,
            active=rep.active,
            updated_at=rep.updated_at,
            updated_by=rep.updated_by,
        )


class RosterOut(Out):
    reps: list[RepOut]
    rotation: list[str] = Field(description="Active reps in the order they take turns")
    next_up: str | None = Field(description="Who the next round-robin assignment goes to")

    @classmethod
    def of(cls, reps: list[Rep], turn: int) -> RosterOut:
        active = [r.user_id for r in reps if r.active]
        return cls(
            reps=[RepOut.of(r) for r in reps], rotation=rotation(active), next_up=round_robin(active, turn)
        )


class ConfigIn(In):
    lead_response_sla_minutes: int = Field(
        ge=MIN_SLA_MINUTES,
        le=MAX_SLA_MINUTES,
        description="Minutes from a qualified lead reaching sales to its response being due",
    )


class ReviewPolicyIn(In):
    value_threshold: Amount | None = Field(
        description="A deal of at least this value (its own currency) needs customer success' review; "
        "null: value is no criterion"
    )
    commitment_threshold: int | None = Field(
        ge=1,
        le=MAX_COMMITMENT_THRESHOLD,
        description="A deal with at least this many commitments needs the review; null: no criterion",
    )


class ReviewPolicyOut(Out):
    value_threshold: StoredAmount | None
    commitment_threshold: int | None

    @classmethod
    def of(cls, p: ReviewPolicy) -> ReviewPolicyOut:
        return cls(value_threshold=p.value_threshold, commitment_threshold=p.commitment_threshold)


class ConfigOut(Out):
    lead_response_sla_minutes: int
    commitment_review: ReviewPolicyOut = Field(
        description="When a deal needs customer success' commitment review before it can be won"
    )
    updated_at: datetime | None = None
    updated_by: str | None = None


class StageIn(In):
    name: str = Field(min_length=1, max_length=40)
    probability: float = Field(ge=0, le=1, description="Win probability for the weighted forecast")
    required_fields: list[str] = Field(default_factory=list, max_length=20)


class PipelineIn(In):
    stages: list[StageIn] = Field(min_length=1, max_length=20)


class StageOut(Out):
    name: str
    probability: float
    required_fields: list[str]
    closed: bool


class PipelineOut(Out):
    version: int
    stages: list[StageOut]
    updated_at: datetime | None = None
    updated_by: str | None = None

    @classmethod
    def of(cls, p: Pipeline, doc: Doc) -> PipelineOut:
        return cls(
            version=p.version,
            stages=[
                StageOut(
                    name=s.name,
                    probability=s.probability,
                    required_fields=list(s.required_fields),
                    closed=s.closed,
                )
                for s in p.stages
            ],
            updated_at=doc.get("updated_at"),
            updated_by=doc.get("updated_by"),
        )


# -- inbox ------------------------------------------------------------------------------------


class AssignIn(In):
    owner: UserId | None = Field(
        default=None,
        description="An active rep's user id (the token's sub), as listed by the gateway's GET /users; "
        "omitted: the next one in the round-robin rotation",
    )


class AcceptIn(In):
    note: Note | None = None


class RejectIn(In):
    reason_code: RejectReason = Field(description="Why sales turned the lead down (required)")
    note: Note | None = None


class RecycleIn(In):
    reason_code: RejectReason | None = Field(default=None, description="Optional, e.g. bad_timing")
    note: Note | None = None


class VerdictOut(Out):
    verdict: Verdict
    reason_code: RejectReason | None
    note: str | None
    decided_by: str
    decided_at: datetime
    opportunity_id: str | None


class InboxItemOut(Out):
    id: str = Field(description="The inbox item: the id of the lead.qualified event that created it")
    lead_id: str
    status: InboxStatus
    owner: str | None
    assigned_by: str | None
    assigned_at: datetime | None
    received_at: datetime
    handed_off_at: datetime
    response_due_at: datetime
    sla_minutes: int
    overdue: bool
    responded_within_sla: bool | None
    handoff_number: int = Field(description="1 for the lead's first handoff, 2 after one recycle, ...")
    company: str
    handoff: LeadQualifiedV1 = Field(description="The full handoff payload from marketing")
    verdict: VerdictOut | None

    @classmethod
    def of(cls, item: InboxItem, now: datetime | None = None) -> InboxItemOut:
        v = item.verdict
        return cls(
            id=item.id,
            lead_id=item.lead_id,
            status=item.status,
            owner=item.owner,
            assigned_by=item.assigned_by,
            assigned_at=item.assigned_at,
            received_at=item.received_at,
            handed_off_at=item.handed_off_at,
            response_due_at=item.response_due_at,
            sla_minutes=item.sla_minutes,
            overdue=item.overdue(now or utcnow()),
            responded_within_sla=item.within_sla,
            handoff_number=item.handoff_number,
            company=item.company,
            handoff=item.handoff,
            verdict=None
            if v is None
            else VerdictOut(
                verdict=v.verdict,
                reason_code=v.reason_code,
                note=v.note,
                decided_by=v.decided_by,
                decided_at=v.decided_at,
                opportunity_id=v.opportunity_id,
            ),
        )


class InboxPageOut(Out):
    items: list[InboxItemOut]
    total: int
    limit: int
    offset: int
    next_cursor: str | None = Field(
        default=None, description="Pass as ?cursor= for the next page; null: the last page"
    )


# -- opportunities ----------------------------------------------------------------------------


class ProductIn(In):
    sku: str = Field(min_length=1, max_length=100)
    name: str = Field(min_length=1, max_length=200)
    quantity: int = Field(ge=1, le=1_000_000)
    unit_price: Amount


class CommitmentIn(In):
    description: str = Field(min_length=1, max_length=2000)
    due_date: Timestamp | None = None


RESERVED_FIELDS = frozenset({"contacts", "stage", "status", "owner", "id", "origin"})
MAX_CUSTOM_FIELDS = 50


class OpportunityFieldsIn(BaseModel):
    """The fields stages require. Known ones are typed; any other name is a custom field
    (a manager may require it in a stage) holding a string, number, boolean or a list of them
    (``crm_platform.values.custom_value``: 64-bit integers, finite numbers). Money fields are
    exact decimals (``crm_platform.money``). Fields are set, never cleared: ``null`` is refused."""

    model_config = ConfigDict(extra="allow", str_strip_whitespace=True)

    amount: Amount | None = Field(default=None, description="Deal value")
    currency: Currency | None = Field(default=None, description=f"ISO 4217; default {DEFAULT_CURRENCY}")
    budget: Amount | None = None
    decision_maker: str | None = Field(default=None, min_length=1, max_length=200)
    close_date: date | None = None
    products: list[ProductIn] | None = Field(default=None, min_length=1, max_length=200)
    commitments: list[CommitmentIn] | None = Field(
        default=None,
        max_length=100,
        description="What sales promised (may be empty, but must be given to win)",
    )
    lost_reason: str | None = Field(default=None, min_length=1, max_length=500)
    contract_months: int | None = Field(
        default=None, ge=1, le=120, description="The contract's term in months (deal.won v2 term; default 12)"
    )
    contract_start: date | None = Field(default=None, description="The contract's start (default: the win)")

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            nulls = sorted(str(k) for k, v in data.items() if v is None)
            if nulls:
                raise ValueError(f"fields are set, not cleared: null given for {nulls}")
        return data

    @model_validator(mode="after")
    def _custom_fields(self) -> OpportunityFieldsIn:
        extra = self.model_extra or {}
        if len(extra) > MAX_CUSTOM_FIELDS:
            raise ValueError(f"at most {MAX_CUSTOM_FIELDS} custom fields")
        problems: list[str] = []
        for name, value in extra.items():
            if name in RESERVED_FIELDS:
                problems.append(f"{name!r} is not a field (contacts go in the top-level 'contacts')")
            elif not NAME_PATTERN.match(name):
                problems.append(f"custom field name {name!r} must be lower-case letters, digits and '_'")
            else:
                try:
                    custom_value(value)
                except ValueError as exc:
                    problems.append(
                        f"custom field {name!r}: {exc} (or a list of up to 100 of those)",
                    )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def values(self) -> Doc:
        """The fields to store: JSON-like, except money, which stays an exact Decimal."""
        out: Doc = self.model_dump(mode="json", exclude_unset=True)
        for name in ("amount", "budget"):
            if name in out:
                out[name] = getattr(self, name)
        if self.products is not None and "products" in out:
            for stored, given in zip(out["products"], self.products, strict=True):
                stored["unit_price"] = given.unit_price
        return out


class StageMoveIn(In):
    stage: str = Field(min_length=1, max_length=40)
    fields: OpportunityFieldsIn = Field(default_factory=OpportunityFieldsIn)
    contacts: list[Contact] = Field(
        default_factory=list, max_length=50, description="Extra contacts (merged by email)"
    )


class FieldsUpdateIn(In):
    fields: OpportunityFieldsIn = Field(default_factory=OpportunityFieldsIn)
    contacts: list[Contact] = Field(default_factory=list, max_length=50)
    custom: CustomIn = None


class ActivityIn(In):
    type: ActivityType
    summary: str = Field(min_length=1, max_length=2000)
    occurred_at: Timestamp | None = Field(default=None, description="Default: now")
    amount: Amount | None = Field(default=None, description="Quotes only")
    currency: Currency | None = None


class ActivityOut(Out):
    id: str
    opportunity_id: str
    type: ActivityType
    summary: str
    occurred_at: datetime
    logged_at: datetime
    logged_by: str
    amount: StoredAmount | None
    currency: str | None

    @classmethod
    def of(cls, a: Activity) -> ActivityOut:
        return cls(
            id=a.id,
            opportunity_id=a.opportunity_id,
            type=a.type,
            summary=a.summary,
            occurred_at=a.occurred_at,
            logged_at=a.logged_at,
            logged_by=a.logged_by,
            amount=a.amount,
            currency=a.currency,
        )


class ProductOut(Out):
    sku: str
    name: str
    quantity: int
    unit_price: StoredAmount


class CommitmentOut(Out):
    commitment_id: str
    description: str
    due_date: datetime | None
    flagged: bool = Field(description="Customer success flagged it as more than can be delivered")


class FlagOut(Out):
    flag_id: str
    commitment_id: str
    commitment_known: bool
    account_id: str
    reason: str
    flagged_by: str
    flagged_at: datetime
    received_at: datetime
    status: str = Field(
        description="open | acknowledged | resolved (sales' answer, sent to customer success)"
    )
    acknowledged_by: str | None = None
    acknowledged_at: datetime | None = None
    resolved_by: str | None = None
    resolved_at: datetime | None = None
    resolution: str | None = None


class FlagResolutionIn(In):
    resolution: str = Field(min_length=1, max_length=2000, description="How the promise was sorted out")


class CommitmentDecisionOut(Out):
    commitment_id: str
    decision: str = Field(description="approved | flagged")
    reason: str | None


class CommitmentReviewOut(Out):
    review_id: str
    status: str = Field(description="pending | approved | flagged")
    reasons: list[str] = Field(description="Why the review was required when requested")
    requested_by: str
    requested_at: datetime
    commitment_ids: list[str] = Field(description="The commitments the review covers")
    covers_current_commitments: bool = Field(
        description="False when the commitments changed since: a new review is needed"
    )
    decisions: list[CommitmentDecisionOut]
    reviewed_by: str | None
    reviewed_at: datetime | None

    @classmethod
    def of(cls, r: CommitmentReview, covers: bool) -> CommitmentReviewOut:
        return cls(
            **{k: getattr(r, k) for k in ("review_id", "reasons", "requested_by", "requested_at")},
            status=r.status.value,
            commitment_ids=[c.commitment_id for c in r.commitments],
            covers_current_commitments=covers,
            decisions=[
                CommitmentDecisionOut(
                    commitment_id=d.commitment_id, decision=d.decision.value, reason=d.reason
                )
                for d in r.decisions
            ],
            reviewed_by=r.reviewed_by,
            reviewed_at=r.reviewed_at,
        )


class StageChangeOut(Out):
    from_stage: str | None
    to_stage: str
    at: datetime
    by: str


class LeadSourceOut(Out):
    source_channel: str
    campaign: str | None
    score: float


_OPPORTUNITY_AS_IS = (
    "id",
    "status",
    "stage",
    "owner",
    "assigned_by",
    "account_name",
    "account_id",
    "direct_source",
    "lead_id",
    "inbox_item_id",
    "signal_id",
    "source_deal_id",
    "signal_kind",
    "description",
    "amount",
    "currency",
    "activity_count",
    "last_activity_at",
    "created_at",
    "updated_at",
    "won_at",
    "lost_at",
    "lost_reason",
)


class OpportunityOut(Out):
    id: str
    origin: str = Field(description="lead (marketing's handoff), upsell (customer success) or direct (sales)")
    direct_source: str | None = Field(
        description="For origin direct: referral, outbound, event, partner, other"
    )
    status: OpportunityStatus
    stage: str
    owner: str
    assigned_by: str
    account_name: str
    account_id: str | None
    lead_id: str | None
    inbox_item_id: str | None
    signal_id: str | None
    source_deal_id: str | None
    signal_kind: str | None
    description: str | None
    lead_source: LeadSourceOut | None
    amount: StoredAmount | None
    currency: str
    fields: dict[str, Any]
    contacts: list[Contact]
    products: list[ProductOut]
    commitments: list[CommitmentOut]
    commitment_flags: list[FlagOut]
    flagged: bool
    commitment_review: CommitmentReviewOut | None = Field(
        description="The latest commitment review by customer success and its verdict"
    )
    win_blocked_by: str | None = Field(
        default=None,
        description="On GET /opportunities/{id} of an open deal: what keeps it from being won "
        "(a required commitment review missing, pending, flagged or outdated); null: nothing",
    )
    stage_history: list[StageChangeOut]
    activity_count: int
    last_activity_at: datetime | None
    created_at: datetime
    updated_at: datetime
    won_at: datetime | None
    lost_at: datetime | None
    lost_reason: str | None
    activities: list[ActivityOut] | None = Field(
        default=None, description="Newest first (on GET /opportunities/{id} only)"
    )
    custom: CustomOut = Field(default_factory=dict)

    @classmethod
    def of(
        cls, o: Opportunity, activities: list[Activity] | None = None, *, win_blocked_by: str | None = None
    ) -> OpportunityOut:
        review = o.commitment_review
        flagged_ids = flagged_commitments(o.commitment_flags)
        products = o.fields.get("products")
        commitments = o.fields.get("commitments")
        return cls(
            **{k: getattr(o, k) for k in _OPPORTUNITY_AS_IS},
            origin=o.origin.value,
            lead_source=LeadSourceOut.model_validate(vars(o.lead_source)) if o.lead_source else None,
            fields=plain_numbers(o.fields),
            contacts=[Contact.model_validate(c) for c in o.contacts],
            products=[ProductOut.model_validate(p) for p in products] if isinstance(products, list) else [],
            commitments=[
                CommitmentOut(
                    commitment_id=c["commitment_id"],
                    description=c["description"],
                    due_date=c.get("due_date"),
                    flagged=c["commitment_id"] in flagged_ids,
                )
                for c in (commitments if isinstance(commitments, list) else [])
            ],
            commitment_flags=[
                FlagOut.model_validate({**vars(f), "status": f.status}) for f in o.commitment_flags
            ],
            flagged=bool(o.commitment_flags),
            commitment_review=CommitmentReviewOut.of(review, o.review_covers_commitments())
            if review
            else None,
            win_blocked_by=win_blocked_by,
            stage_history=[StageChangeOut.model_validate(vars(h)) for h in o.stage_history],
            activities=[ActivityOut.of(a) for a in activities] if activities is not None else None,
            custom=custom_out(o.custom),
        )


class OpportunityPageOut(Out):
    items: list[OpportunityOut]
    total: int
    limit: int
    offset: int
    next_cursor: str | None = Field(None, description="pass as ?cursor= for the next page; null on the last")


class DecisionOut(Out):
    item: InboxItemOut
    opportunity: OpportunityOut | None = Field(description="The opportunity an acceptance opened")


# -- forecast ---------------------------------------------------------------------------------


class StageForecastOut(Out):
    stage: str
    probability: float
    closed: bool
    count: int
    value: StoredAmount
    weighted: StoredAmount


class ForecastOut(Out):
    scope: str = Field(description="'own' (the caller's book), 'rep' (one rep's, for managers) or 'team'")
    owner: str | None = Field(description="The rep the figures are for; null for the whole team")
    pipeline_version: int
    currencies: list[str] = Field(description="Currencies seen; amounts are summed as given, not converted")
    stages: list[StageForecastOut]
    open_count: int
    open_value: StoredAmount
    weighted_open: StoredAmount
    won_value: StoredAmount
    weighted_forecast: StoredAmount = Field(description="Sum over every stage of amount x win probability")

    @classmethod
    def of(
        cls, f: Forecast, *, scope: str, owner: str | None, pipeline_version: int, currencies: list[str]
    ) -> ForecastOut:
        return cls(
            scope=scope,
            owner=owner,
            pipeline_version=pipeline_version,
            currencies=currencies,
            stages=[
                StageForecastOut(
                    stage=s.stage,
                    probability=s.probability,
                    closed=s.closed,
                    count=s.count,
                    value=s.value,
                    weighted=s.weighted,
                )
                for s in f.stages
            ],
            open_count=f.open_count,
            open_value=f.open_value,
            weighted_open=f.weighted_open,
            won_value=f.won_value,
            weighted_forecast=f.weighted_forecast,
        )


# -- records sales creates itself (referrals, outbound) --------------------------------------

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
OWNER_HELP = "Managers: the active rep who owns it (default: you); a rep always creates in their own book"


class AccountIn(In):
    name: Text = Field(description="The company's name (one account per name, case-insensitive)")
    source: DirectSource = Field(description="How it came in: referral, outbound, event, partner, other")
    owner: UserId | None = Field(default=None, description=OWNER_HELP)
    industry: Text | None = None
    website: AnyHttpUrl | None = None
    custom: CustomIn = None


class AccountOut(Out):
    id: str
    name: str
    owner: str
    source: DirectSource
    industry: str | None
    website: str | None
    created_by: str
    created_at: datetime
    updated_at: datetime
    custom: CustomOut = Field(default_factory=dict)

    @classmethod
    def of(cls, a: Account) -> AccountOut:
        return cls.model_validate({**vars(a), "custom": custom_out(a.custom)})


class AccountPageOut(Out):
    items: list[AccountOut]
    limit: int
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null: the last page")


class ContactIn(In):
    email: EmailStr = Field(description="The person's email: one contact per email (as marketing's capture)")
    name: Text
    source: DirectSource
    account_id: Annotated[str, StringConstraints(min_length=1, max_length=100)] | None = Field(
        default=None, description="The account (POST /accounts) the person works at"
    )
    owner: UserId | None = Field(default=None, description=OWNER_HELP)
    phone: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=50)] | None = None
    role: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)] | None = None


class ContactRowIn(In):
    """One row of a contact import, by ``POST /contacts``' field rules (``ContactIn``)."""

    email: EmailStr
    name: Text
    phone: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=50)] | None = None
    role: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)] | None = None


class ContactImportDefaultsIn(In):
    owner: UserId | None = Field(default=None, description=OWNER_HELP)


class ContactOut(Out):
    id: str
    email: str
    name: str
    owner: str
    source: str
    account_id: str | None
    phone: str | None
    role: str | None
    import_id: str | None
    created_by: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, c: SalesContact) -> ContactOut:
        return cls.model_validate({**vars(c)})


class ContactPageOut(Out):
    items: list[ContactOut]
    limit: int
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null: the last page")


RecordId = Annotated[str, StringConstraints(min_length=1, max_length=100)]


class OpportunityIn(In):
    """An opportunity sales opens itself (a referral, outbound work) for one of its accounts."""

    account_id: RecordId = Field(description="The account (POST /accounts) the deal is with")
    source: DirectSource
    contact_ids: list[RecordId] = Field(
        default_factory=list, max_length=50, description="Contacts (POST /contacts) on the deal"
    )
    owner: UserId | None = Field(default=None, description=OWNER_HELP)
    description: Note | None = None
    custom: CustomIn = None
