"""The opportunity: an entity that moves through the pipeline and records what happened to it.

An opportunity opens in the pipeline's first stage (from an accepted lead or an
upsell spotted by customer success), moves stage by stage (each move checks the
target stage's required fields and records its history), and once won is the deal
handed to customer success (``deal.won``, validated before anything is stored).
Its fields are set, never cleared; ``amount`` and ``currency`` are derived from
them in one place (:meth:`Opportunity._set_fields`). Won or lost, its fields stay
as they were handed off. Methods take the time, ids and acting user as arguments
and return the events the change causes; no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from crm_contracts import Event
from crm_contracts.events.common import Contact, Money
from crm_contracts.events.leads import LeadQualifiedV1
from crm_contracts.events.sales import (
    ActivityLoggedV1,
    Commitment,
    CommitmentFlagStatus,
    CommitmentFlagUpdatedBySalesV1,
    CommitmentReviewRequestedV1,
    ContractTerm,
    DealWonV2,
    OpportunityCreatedV3,
    OpportunityLostV1,
    OpportunityStageChangedV1,
    Product,
)
from crm_contracts.events.service_desk import (
    CommitmentFlaggedV1,
    CommitmentReviewCompletedV1,
    UpsellSpottedV1,
)
from crm_platform.custom_fields import FieldSet, RecordType, StoredValue, to_extensions
from crm_platform.errors import Conflict, NotFound, RuleViolation
from crm_platform.money import plain_numbers, to_amount, to_wire
from pydantic import ValidationError

from sales.domain.account import Account, DirectSource
from sales.domain.contact import Contact as SalesContact
from sales.domain.pipeline import LOST, WON, Pipeline, check_stage_move
from sales.domain.review import CommitmentReview, ReviewPolicy, ReviewStatus, as_commitments, missing_review

NO_CUSTOM_FIELDS = FieldSet(RecordType.OPPORTUNITY)
MAX_CLOCK_SKEW = timedelta(minutes=5)
DEFAULT_CURRENCY = "EUR"
DEFAULT_CONTRACT_MONTHS = 12  # a won deal whose fields name no contract_months

Fields = dict[str, object]
"""An opportunity's stage fields: typed known ones (amount, products, ...) and custom ones."""
ContactDoc = dict[str, str | None]
"""A contact as stored and merged (the ``Contact`` contract's fields)."""


class OpportunityStatus(StrEnum):
    OPEN = "open"
    WON = "won"
    LOST = "lost"


class Origin(StrEnum):
    LEAD = "lead"
    UPSELL = "upsell"
    DIRECT = "direct"  # created by sales itself (a referral, outbound work): Opportunity.direct


class ActivityType(StrEnum):
    CALL = "call"
    VISIT = "visit"
    EMAIL = "email"
    QUOTE = "quote"


def status_for_stage(stage: str) -> OpportunityStatus:
    if stage == WON:
        return OpportunityStatus.WON
    if stage == LOST:
        return OpportunityStatus.LOST
    return OpportunityStatus.OPEN


def check_open_for_edit(status: OpportunityStatus) -> None:
    """Fields of a won or lost opportunity are what was handed off: they stay as they are."""
    if status != OpportunityStatus.OPEN:
        raise Conflict(f"the opportunity is {status}: its fields can no longer change", status=status.value)


def merge_contacts(
    existing: Sequence[Mapping[str, object]], extra: Iterable[Mapping[str, object]]
) -> list[ContactDoc]:
    """Existing contacts first, then the extra ones; one per email (case-insensitive).

    A repeated email updates the details given for it (name, phone, role) and keeps
    the email as first spelled.
    """
    out: list[ContactDoc] = [_contact(c) for c in existing]
    index = {str(c["email"]).casefold(): i for i, c in enumerate(out)}
    for c in extra:
        key = str(c["email"]).casefold()
        if key in index:
            merged = out[index[key]]
            merged.update({k: v for k, v in _contact(c).items() if v is not None and k != "email"})
        else:
            index[key] = len(out)
            out.append(_contact(c))
    return out


def _contact(c: Mapping[str, object]) -> ContactDoc:
    return {k: None if v is None else str(v) for k, v in c.items()}


def with_commitment_ids(
    commitments: Iterable[Mapping[str, object]], new_id: Callable[[], str]
) -> list[dict[str, object]]:
    """Each commitment gets its own id: customer success flags it back by that id."""
    return [{**c, "commitment_id": c.get("commitment_id") or new_id()} for c in commitments]


def check_activity(
    activity_type: ActivityType, amount: Decimal | None, occurred_at: datetime, now: datetime
) -> None:
    problems: list[str] = []
    if amount is not None and activity_type != ActivityType.QUOTE:
        problems.append("only a quote carries an amount")
    if occurred_at > now + MAX_CLOCK_SKEW:
        problems.append("occurred_at is in the future")
    if problems:
        raise RuleViolation("; ".join(problems), problems=problems)


def flagged_commitments(flags: Iterable[CommitmentFlag]) -> set[str]:
    return {f.commitment_id for f in flags}


def money_of(fields: Mapping[str, object]) -> tuple[Decimal | None, str]:
    """The amount (exact) and currency the fields give; the default currency when none is set."""
    amount = fields.get("amount")
    return (None if amount is None else to_amount(amount)), str(fields.get("currency") or DEFAULT_CURRENCY)


def _dicts(value: object) -> list[Mapping[str, object]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


@dataclass(frozen=True)
class StageChange:
    from_stage: str | None
    to_stage: str
    at: datetime
    by: str


@dataclass(frozen=True)
class CommitmentFlag:
    flag_id: str
    commitment_id: str
    commitment_known: bool
    account_id: str
    reason: str
    flagged_by: str
    flagged_at: datetime
    received_at: datetime
    # After the win, sales' answer to the flag (sent back to customer success).
    acknowledged_by: str | None = None
    acknowledged_at: datetime | None = None
    resolved_by: str | None = None
    resolved_at: datetime | None = None
    resolution: str | None = None

    @property
    def status(self) -> str:
        """open (not yet answered), acknowledged, or resolved."""
        if self.resolved_at is not None:
            return CommitmentFlagStatus.RESOLVED.value
        return CommitmentFlagStatus.ACKNOWLEDGED.value if self.acknowledged_at is not None else "open"


@dataclass(frozen=True)
class LeadSource:
    source_channel: str
    campaign: str | None
    score: float


@dataclass(frozen=True)
class Activity:
    id: str
    opportunity_id: str
    type: ActivityType
    summary: str
    occurred_at: datetime
    logged_at: datetime
    logged_by: str
    amount: Decimal | None
    currency: str | None


@dataclass
class Opportunity:
    id: str
    origin: Origin
    stage: str
    owner: str
    assigned_by: str
    account_name: str
    correlation_id: str
    created_at: datetime
    updated_at: datetime
    stage_entered_at: datetime
    status: OpportunityStatus = OpportunityStatus.OPEN
    fields: Fields = field(default_factory=dict)
    amount: Decimal | None = None
    currency: str = DEFAULT_CURRENCY
    contacts: list[ContactDoc] = field(default_factory=list)
    account_id: str | None = None
    lead_id: str | None = None
    inbox_item_id: str | None = None
    signal_id: str | None = None
    source_deal_id: str | None = None
    signal_kind: str | None = None
    description: str | None = None
    lead_source: LeadSource | None = None
    commitment_flags: list[CommitmentFlag] = field(default_factory=list)
    commitment_review: CommitmentReview | None = None
    stage_history: list[StageChange] = field(default_factory=list)
    activity_count: int = 0
    last_activity_at: datetime | None = None
    won_at: datetime | None = None
    lost_at: datetime | None = None
    lost_reason: str | None = None
    assignment_counter: int | None = None
    direct_source: str | None = None  # origin direct: a DirectSource value
    custom: dict[str, StoredValue] = field(default_factory=dict)  # checked by FieldSet.create / edit

    # -- opening --------------------------------------------------------------------------------

    @classmethod
    def from_lead(
        cls,
        opportunity_id: str,
        handoff: LeadQualifiedV1,
        *,
        inbox_item_id: str,
        stage: str,
        owner: str,
        assigned_by: str,
        correlation_id: str,
        by: str,
        now: datetime,
    ) -> Opportunity:
        """The opportunity an accepted lead opens, in the pipeline's first stage."""
        return cls(
            id=opportunity_id,
            origin=Origin.LEAD,
            stage=stage,
            owner=owner,
            assigned_by=assigned_by,
            account_name=handoff.company,
            correlation_id=correlation_id,
            created_at=now,
            updated_at=now,
            stage_entered_at=now,
            contacts=[_contact(handoff.contact.model_dump(mode="json"))],
            lead_id=handoff.lead_id,
            inbox_item_id=inbox_item_id,
            lead_source=LeadSource(handoff.source_channel, handoff.campaign, handoff.score),
            stage_history=[StageChange(None, stage, now, by)],
        )

    @classmethod
    def from_upsell(
        cls,
        opportunity_id: str,
        signal: UpsellSpottedV1,
        *,
        stage: str,
        owner: str,
        assigned_by: str,
        contacts: Sequence[ContactDoc],
        correlation_id: str,
        counter: int | None,
        now: datetime,
    ) -> Opportunity:
        """The opportunity customer success' upsell signal opens for the account's sales owner."""
        opp = cls(
            id=opportunity_id,
            origin=Origin.UPSELL,
            stage=stage,
            owner=owner,
            assigned_by=assigned_by,
            account_name=signal.account_name,
            correlation_id=correlation_id,
            created_at=now,
            updated_at=now,
            stage_entered_at=now,
            contacts=[dict(c) for c in contacts],
            account_id=signal.account_id,
            signal_id=signal.signal_id,
            source_deal_id=signal.deal_id,
            signal_kind=signal.kind.value,
            description=signal.description,
            stage_history=[StageChange(None, stage, now, f"service-desk:{signal.spotted_by}")],
            assignment_counter=counter,
        )
        if signal.estimated_value is not None:
            opp._set_fields({"amount": to_amount(signal.estimated_value)})
        return opp

    @classmethod
    def direct(
        cls,
        opportunity_id: str,
        account: Account,
        contacts: Sequence[SalesContact],
        *,
        source: DirectSource,
        stage: str,
        owner: str,
        by: str,
        now: datetime,
        description: str | None = None,
        custom: Mapping[str, StoredValue] | None = None,
    ) -> Opportunity:
        """An opportunity sales opens itself for one of its accounts, in the pipeline's first stage.

        Its contacts are the account's people named (as the deal.won handoff carries them);
        ``custom``: its custom field values, already checked (``FieldSet.create``). From here
        on it is like any other: moved stage by stage and, once won, handed off."""
        return cls(
            id=opportunity_id,
            origin=Origin.DIRECT,
            stage=stage,
            owner=owner,
            assigned_by="creator" if owner == by else "manager",
            account_name=account.name,
            correlation_id=opportunity_id,
            created_at=now,
            updated_at=now,
            stage_entered_at=now,
            contacts=merge_contacts([], [c.as_deal_contact() for c in contacts]),
            account_id=account.id,
            description=description,
            stage_history=[StageChange(None, stage, now, by)],
            direct_source=source.value,
            custom=dict(custom or {}),
        )

    def created_event(self, fields: FieldSet = NO_CUSTOM_FIELDS) -> OpportunityCreatedV3:
        """``opportunity.created`` v3: the custom values ``fields`` defines, text left out."""
        return OpportunityCreatedV3(
            opportunity_id=self.id,
            account_name=self.account_name,
            owner=self.owner,
            stage=self.stage,
            origin=self.origin.value,
            lead_id=self.lead_id,
            signal_id=self.signal_id,
            amount=to_wire(self.amount),
            source=self.direct_source,
            account_id=self.account_id if self.origin == Origin.DIRECT else None,
            custom=to_extensions(fields, self.custom) if self.custom else {},
        )

    # -- changes --------------------------------------------------------------------------------

    def _set_fields(self, fields: Fields) -> None:
        self.fields = fields
        self.amount, self.currency = money_of(fields)

    def _with_ids(self, new_fields: Mapping[str, object], new_id: Callable[[], str]) -> Fields:
        out = dict(new_fields)
        if "commitments" in out:
            out["commitments"] = with_commitment_ids(_dicts(out["commitments"]), new_id)
        return out

    def move_to(
        self,
        pipeline: Pipeline,
        target: str,
        new_fields: Mapping[str, object],
        contacts: Sequence[Mapping[str, object]],
        *,
        by: str,
        now: datetime,
        new_id: Callable[[], str],
        review_policy: ReviewPolicy,
    ) -> list[Event]:
        """Move to ``target`` (its required fields checked over the merged fields); the events it causes.

        A move into ``won`` builds the ``deal.won`` handoff first: a deal that would not make
        a valid one is refused (422) before anything changes, and so (409) is a deal that
        needs customer success' review of its commitments (``review_policy``) without an
        approved one covering them.
        """
        merged = dict(
            check_stage_move(pipeline, self.stage, target, self.fields, self._with_ids(new_fields, new_id))
        )
        contacts_after = merge_contacts(self.contacts, contacts)
        status = status_for_stage(target)
        deal = self._deal_won(merged, contacts_after, now) if status == OpportunityStatus.WON else None
        if deal is not None:
            self._check_review(review_policy, deal)
        from_stage = self.stage
        self._enter(target, status, merged, contacts_after, by=by, now=now)
        events: list[Event] = [
            OpportunityStageChangedV1(
                opportunity_id=self.id,
                from_stage=from_stage,
                to_stage=target,
                owner=self.owner,
                amount=to_wire(self.amount),
            )
        ]
        if deal is not None:
            events.append(deal)
        if self.lost_reason is not None and status == OpportunityStatus.LOST:
            events.append(
                OpportunityLostV1(opportunity_id=self.id, reason=self.lost_reason, owner=self.owner)
            )
        return events

    def _enter(
        self,
        target: str,
        status: OpportunityStatus,
        fields: Fields,
        contacts: list[ContactDoc],
        *,
        by: str,
        now: datetime,
    ) -> None:
        """The checked move's changes: fields, contacts, stage, status, when won or lost, history."""
        from_stage = self.stage
        self._set_fields(fields)
        self.contacts = contacts
        self.stage, self.status = target, status
        self.stage_entered_at = self.updated_at = now
        if status == OpportunityStatus.WON:
            self.won_at = now
        elif status == OpportunityStatus.LOST:
            self.lost_at, self.lost_reason = now, str(fields["lost_reason"])
        self.stage_history.append(StageChange(from_stage, target, now, by))

    def _deal_won(self, fields: Mapping[str, object], contacts: list[ContactDoc], now: datetime) -> DealWonV2:
        """The handoff to customer success, validated against its contract.

        v2 carries the contract term: ``contract_start`` (a date; default the win) and
        ``contract_months`` (default 12), valued at the deal's amount."""
        try:
            amount, currency = money_of(fields)
            value = Money(amount=to_wire(amount), currency=currency)
            start = fields.get("contract_start")
            months = fields.get("contract_months")
            term = ContractTerm.starting(
                datetime.fromisoformat(f"{start}T00:00:00+00:00") if start else now,
                int(str(months)) if months else DEFAULT_CONTRACT_MONTHS,
                value,
            )
            return DealWonV2(
                deal_id=self.id,
                lead_id=self.lead_id,
                account_name=self.account_name,
                contacts=[Contact.model_validate(c) for c in contacts],
                products=[Product.model_validate(plain_numbers(p)) for p in _dicts(fields["products"])],
                value=value,
                commitments=[Commitment.model_validate(c) for c in _dicts(fields["commitments"])],
                sales_owner=self.owner,
                won_at=now,
                term=term,
            )
        except (ValidationError, TypeError, KeyError, ValueError) as exc:
            errors = (
                [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
                if isinstance(exc, ValidationError)
                else [{"message": str(exc)}]
            )
            raise RuleViolation(
                "the won deal does not make a valid deal.won handoff", errors=errors
            ) from None

    def update_fields(
        self,
        new_fields: Mapping[str, object],
        contacts: Sequence[Mapping[str, object]],
        *,
        now: datetime,
        new_id: Callable[[], str],
        custom: Mapping[str, StoredValue] | None = None,
    ) -> None:
        """Set fields (and add contacts) on an open opportunity without moving it; ``custom``:
        its custom values after the edit (``FieldSet.edit``), when the edit gave any."""
        check_open_for_edit(self.status)
        if custom is not None:
            self.custom = dict(custom)
        self._set_fields({**self.fields, **self._with_ids(new_fields, new_id)})
        self.contacts = merge_contacts(self.contacts, contacts)
        self.updated_at = now

    def log_activity(
        self,
        activity_id: str,
        activity_type: ActivityType,
        summary: str,
        *,
        by: str,
        occurred_at: datetime,
        now: datetime,
        amount: Decimal | None = None,
        currency: str | None = None,
    ) -> tuple[Activity, ActivityLoggedV1]:
        """A call, visit, email or quote against this opportunity (checked by :func:`check_activity`)."""
        check_activity(activity_type, amount, occurred_at, now)
        activity = Activity(
            id=activity_id,
            opportunity_id=self.id,
            type=activity_type,
            summary=summary,
            occurred_at=occurred_at,
            logged_at=now,
            logged_by=by,
            amount=amount,
            currency=(currency or self.currency) if amount is not None else None,
        )
        self.activity_count += 1
        if self.last_activity_at is None or occurred_at > self.last_activity_at:
            self.last_activity_at = occurred_at
        self.updated_at = now
        event = ActivityLoggedV1(
            opportunity_id=self.id,
            activity_id=activity_id,
            activity_type=activity_type.value,
            owner=self.owner,
        )
        return activity, event

    # -- customer success' commitment review -----------------------------------------------------

    def review_reasons(self, policy: ReviewPolicy) -> list[str]:
        """Why this deal needs customer success' review before the win (empty: it does not)."""
        return policy.reasons(self.amount, self.currency, len(_dicts(self.fields.get("commitments"))))

    def review_covers_commitments(self) -> bool:
        review = self.commitment_review
        return review is not None and review.covers(as_commitments(_dicts(self.fields.get("commitments"))))

    def win_blocked_by(self, policy: ReviewPolicy) -> str | None:
        """What keeps this open deal from being won as it stands (a required review); None: nothing."""
        if self.status != OpportunityStatus.OPEN:
            return None
        commitments = as_commitments(_dicts(self.fields.get("commitments")))
        return missing_review(self.commitment_review, self.review_reasons(policy), commitments)

    def _check_review(self, policy: ReviewPolicy, deal: DealWonV2) -> None:
        reasons = policy.reasons(to_amount(deal.value.amount), deal.value.currency, len(deal.commitments))
        missing = missing_review(self.commitment_review, reasons, deal.commitments)
        if missing is not None:
            review = self.commitment_review
            raise Conflict(
                missing,
                review_required_because=reasons,
                review_id=review.review_id if review else None,
                review_status=review.status.value if review else None,
            )

    def request_review(
        self, policy: ReviewPolicy, review_id: str, *, by: str, now: datetime
    ) -> CommitmentReviewRequestedV1:
        """Ask customer success to review the commitments as they are now (superseding an older review)."""
        check_open_for_edit(self.status)
        commitments = as_commitments(_dicts(self.fields.get("commitments")))
        current = self.commitment_review
        if current is not None and current.covers(commitments) and current.status != ReviewStatus.FLAGGED:
            raise Conflict(
                f"review {current.review_id} already covers these commitments ({current.status}): "
                "change the commitments to ask again",
                review_id=current.review_id,
                review_status=current.status.value,
            )
        reasons = self.review_reasons(policy)
        self.commitment_review = CommitmentReview(review_id, by, now, reasons, commitments)
        self.updated_at = now
        return CommitmentReviewRequestedV1(
            review_id=review_id,
            deal_id=self.id,
            account_name=self.account_name,
            sales_owner=self.owner,
            value=Money(amount=to_wire(self.amount), currency=self.currency)
            if self.amount is not None
            else None,
            commitments=commitments,
            reasons=reasons,
            requested_by=by,
            requested_at=now,
        )

    def _money(self) -> Money | None:
        amount = to_wire(self.amount)
        return None if amount is None else Money(amount=amount, currency=self.currency)

    def record_review(self, verdict: CommitmentReviewCompletedV1, *, now: datetime) -> bool:
        """Customer success' verdict on the current review; False if it is for an older one or known."""
        if self.commitment_review is None or not self.commitment_review.record(verdict, now):
            return False
        self.updated_at = now
        return True

    @property
    def commitment_ids(self) -> set[str]:
        return {str(c.get("commitment_id")) for c in _dicts(self.fields.get("commitments"))}

    def flag_commitment(
        self, flag: CommitmentFlaggedV1, *, flagged_at: datetime, now: datetime
    ) -> CommitmentFlag | None:
        """Record customer success' flag on a promise of this won deal; None if already recorded."""
        if any(f.flag_id == flag.flag_id for f in self.commitment_flags):
            return None
        recorded = CommitmentFlag(
            flag_id=flag.flag_id,
            commitment_id=flag.commitment_id,
            commitment_known=flag.commitment_id in self.commitment_ids,
            account_id=flag.account_id,
            reason=flag.reason,
            flagged_by=flag.flagged_by,
            flagged_at=flagged_at,
            received_at=now,
        )
        self.commitment_flags.append(recorded)
        self.updated_at = now
        return recorded

    def acknowledge_flag(self, flag_id: str, *, by: str, now: datetime) -> CommitmentFlagUpdatedBySalesV1:
        """Sales has seen a flag on a promise of this won deal and owns sorting it out."""
        flag = self._flag(flag_id)
        if flag.acknowledged_at is not None:
            raise Conflict(
                f"flag {flag_id!r} was already acknowledged by {flag.acknowledged_by}",
                flag_id=flag_id,
                status=flag.status,
            )
        return self._answer(replace(flag, acknowledged_by=by, acknowledged_at=now), now)

    def resolve_flag(
        self, flag_id: str, resolution: str, *, by: str, now: datetime
    ) -> CommitmentFlagUpdatedBySalesV1:
        """Sales sorted the flagged promise out with the customer (acknowledging it if not yet)."""
        flag = self._flag(flag_id)
        if flag.resolved_at is not None:
            raise Conflict(f"flag {flag_id!r} is already resolved", flag_id=flag_id, status=flag.status)
        if not resolution.strip():
            raise RuleViolation("a resolution says how the flag was sorted out", field="resolution")
        acknowledged = (flag.acknowledged_by, flag.acknowledged_at) if flag.acknowledged_at else (by, now)
        resolved = replace(
            flag,
            acknowledged_by=acknowledged[0],
            acknowledged_at=acknowledged[1],
            resolved_by=by,
            resolved_at=now,
            resolution=resolution.strip(),
        )
        return self._answer(resolved, now)

    def _flag(self, flag_id: str) -> CommitmentFlag:
        flag = next((f for f in self.commitment_flags if f.flag_id == flag_id), None)
        if flag is None:
            known = [f.flag_id for f in self.commitment_flags]
            raise NotFound(
                f"opportunity {self.id} has no commitment flag {flag_id!r}", flag_id=flag_id, flags=known
            )
        return flag

    def _answer(self, flag: CommitmentFlag, now: datetime) -> CommitmentFlagUpdatedBySalesV1:
        self.commitment_flags = [flag if f.flag_id == flag.flag_id else f for f in self.commitment_flags]
        self.updated_at = now
        resolved = flag.resolved_at is not None
        return CommitmentFlagUpdatedBySalesV1(
            flag_id=flag.flag_id,
            deal_id=self.id,
            account_id=flag.account_id,
            commitment_id=flag.commitment_id,
            status=CommitmentFlagStatus.RESOLVED if resolved else CommitmentFlagStatus.ACKNOWLEDGED,
            resolution=flag.resolution,
            acted_by=(flag.resolved_by if resolved else flag.acknowledged_by) or "",
            acted_at=now,
            flagged_at=flag.flagged_at,
        )
