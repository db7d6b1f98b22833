"""Check-ins, health and the churn early warning, surveys (the staff side)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Annotated

from crm_contracts.events.service_desk import HealthBand, Sentiment, SurveyKind
from crm_platform.routes import CurrentActor
from crm_platform.values import Timestamp
from fastapi import APIRouter, Query, Request, status
from pydantic import BaseModel, Field

from service_desk.api.deps import CSM_LEADS, SERVICE_DESK_ROLES, Secret, UowDep
from service_desk.api.models import Body
from service_desk.domain.accounts import Account, Usage
from service_desk.domain.checkins import CheckIn, CheckInDue, per_csm
from service_desk.domain.health import HealthRecord, HealthRules, HealthState, RuleSet, StoredReason
from service_desk.domain.surveys import Survey
from service_desk.handlers import success as lifecycle

router = APIRouter(tags=["customer success"], dependencies=[SERVICE_DESK_ROLES])


# --- check-ins ----------------------------------------------------------------------------------


class CheckInIn(Body):
    held_at: Timestamp
    attendees: list[str] = Field(min_length=1, max_length=50, description="Who attended (names)")
    sentiment: Sentiment
    notes: str | None = Field(default=None, max_length=20000)


class CheckInOut(BaseModel):
    checkin_id: str
    account_id: str
    held_at: datetime
    attendees: list[str]
    sentiment: Sentiment
    notes: str | None
    due_at: datetime | None
    logged_by: str
    logged_at: datetime

    @classmethod
    def of(cls, c: CheckIn) -> CheckInOut:
        return cls.model_validate(asdict(c))


class CheckInList(BaseModel):
    items: list[CheckInOut]
    count: int


class CheckInDueOut(BaseModel):
    account_id: str
    account_name: str
    tier: str
    csm: str | None
    due_at: datetime
    overdue: bool
    days_overdue: int

    @classmethod
    def of(cls, d: CheckInDue) -> CheckInDueOut:
        return cls(
            account_id=d.account.account_id,
            account_name=d.account.name,
            tier=d.account.tier,
            csm=d.csm,
            due_at=d.due_at,
            overdue=d.overdue,
            days_overdue=d.days_overdue,
        )


class CheckInsDue(BaseModel):
    items: list[CheckInDueOut]
    count: int
    per_csm: dict[str, dict[str, int]] = Field(description="{csm: {due, overdue}}")


@router.post(
    "/accounts/{account_id}/checkins",
    response_model=CheckInOut,
    status_code=status.HTTP_201_CREATED,
    summary="Log a check-in (account.checkin_logged); rescoring the account's health",
)
async def post_checkin(account_id: str, body: CheckInIn, uow: UowDep, actor: CurrentActor) -> CheckInOut:
    entry = lifecycle.CheckInEntry(body.held_at, body.attendees, body.sentiment, body.notes)
    return CheckInOut.of(await lifecycle.log_checkin(uow, account_id, entry, actor))


@router.get("/accounts/{account_id}/checkins", response_model=CheckInList, summary="The account's check-ins")
async def get_checkins(account_id: str, uow: UowDep, actor: CurrentActor) -> CheckInList:
    items = [CheckInOut.of(c) for c in await lifecycle.account_checkins(uow, account_id, actor)]
    return CheckInList(items=items, count=len(items))


@router.get(
    "/checkins/due",
    response_model=CheckInsDue,
    summary="Check-ins due within the horizon and overdue, per CSM (a CSM: their own)",
)
async def get_checkins_due(
    uow: UowDep,
    actor: CurrentActor,
    csm: Annotated[str | None, Query(max_length=100)] = None,
    horizon_days: Annotated[int, Query(ge=0, le=366)] = 14,
) -> CheckInsDue:
    due = await lifecycle.checkins_due(uow, csm, horizon_days, actor)
    return CheckInsDue(items=[CheckInDueOut.of(d) for d in due], count=len(due), per_csm=per_csm(due))


# --- health -------------------------------------------------------------------------------------


class HealthStateOut(BaseModel):
    score: float
    band: HealthBand
    rules_version: int
    reasons: list[StoredReason]
    scored_at: datetime
    at_risk: bool
    signals: list[str]
    signal_details: list[str]
    at_risk_since: datetime | None

    @classmethod
    def of(cls, h: HealthState) -> HealthStateOut:
        return cls.model_validate(asdict(h))


class HealthRecordOut(BaseModel):
    score: float
    band: HealthBand
    rules_version: int
    reasons: list[StoredReason]
    scored_at: datetime

    @classmethod
    def of(cls, r: HealthRecord) -> HealthRecordOut:
        return cls.model_validate(asdict(r))


class HealthOut(BaseModel):
    account_id: str
    current: HealthStateOut | None = Field(description="null until the account is first scored")
    history: list[HealthRecordOut] = Field(description="Every change of score, newest first")


class UsageIn(Body):
    active_users: int = Field(ge=0, le=10_000_000)
    licensed_users: int = Field(ge=1, le=10_000_000)
    as_of: Timestamp


class RuleSetOut(BaseModel):
    version: int
    rules: HealthRules
    created_at: datetime | None
    created_by: str | None

    @classmethod
    def of(cls, r: RuleSet) -> RuleSetOut:
        return cls(version=r.version, rules=r.rules, created_at=r.created_at, created_by=r.created_by)


class Recomputed(BaseModel):
    accounts: int


class AtRiskOut(BaseModel):
    account_id: str
    account_name: str
    tier: str
    account_manager: str | None
    csm: str | None
    score: float
    band: HealthBand
    signals: list[str]
    signal_details: list[str]
    at_risk_since: datetime | None

    @classmethod
    def of(cls, a: Account) -> AtRiskOut:
        h = a.health
        assert h is not None
        return cls(
            account_id=a.account_id,
            account_name=a.name,
            tier=a.tier,
            account_manager=a.account_manager,
            csm=a.csm,
            score=h.score,
            band=h.band,
            signals=h.signals,
            signal_details=h.signal_details,
            at_risk_since=h.at_risk_since,
        )


class AtRiskList(BaseModel):
    items: list[AtRiskOut]
    count: int


class HitRateOut(BaseModel):
    lookback_days: int
    evaluated: int = Field(description="Renewal outcomes recorded")
    true_positives: int = Field(description="Churned, warned before")
    false_positives: int = Field(description="Warned, did not churn")
    false_negatives: int = Field(description="Churned without a warning")
    true_negatives: int
    precision: float | None = Field(
        description="Of warned renewals, the share that churned (null: none warned)"
    )
    recall: float | None = Field(
        description="Of churned renewals, the share warned before (null: none churned)"
    )
    rules_version: int


@router.get(
    "/accounts/{account_id}/health", response_model=HealthOut, summary="Health score, reasons, history"
)
async def get_health(account_id: str, uow: UowDep, actor: CurrentActor) -> HealthOut:
    view = await lifecycle.account_health(uow, account_id, actor)
    return HealthOut(
        account_id=account_id,
        current=HealthStateOut.of(view.state) if view.state else None,
        history=[HealthRecordOut.of(r) for r in view.history],
    )


@router.put(
    "/accounts/{account_id}/usage",
    response_model=HealthOut,
    summary="Report usage (licences in use); rescoring health",
)
async def put_usage(account_id: str, body: UsageIn, uow: UowDep, actor: CurrentActor) -> HealthOut:
    usage = Usage(active_users=body.active_users, licensed_users=body.licensed_users, as_of=body.as_of)
    await lifecycle.record_usage(uow, account_id, usage, actor)
    return await get_health(account_id, uow, actor)


@router.get("/health/rules", response_model=RuleSetOut, summary="The current health rules and their version")
async def get_rules(uow: UowDep) -> RuleSetOut:
    return RuleSetOut.of(await lifecycle.health_rules(uow))


@router.put(
    "/health/rules",
    response_model=RuleSetOut,
    summary="Save new health rules as the next version",
    dependencies=[CSM_LEADS],
)
async def put_rules(body: HealthRules, uow: UowDep, actor: CurrentActor) -> RuleSetOut:
    return RuleSetOut.of(await lifecycle.replace_health_rules(uow, body, actor))


@router.post(
    "/health/recompute",
    response_model=Recomputed,
    summary="Score every active account of your book again (run it daily: time moves the score)",
)
async def recompute(uow: UowDep, actor: CurrentActor) -> Recomputed:
    return Recomputed(accounts=await lifecycle.recompute_health(uow, actor))


@router.get(
    "/churn-warnings",
    response_model=AtRiskList,
    summary="Accounts at risk of churning with the reasons, for their account manager (a CSM: their own)",
)
async def get_churn_warnings(
    uow: UowDep, actor: CurrentActor, manager: Annotated[str | None, Query(max_length=100)] = None
) -> AtRiskList:
    items = [AtRiskOut.of(a) for a in await lifecycle.churn_warnings(uow, manager, actor)]
    return AtRiskList(items=items, count=len(items))


@router.get(
    "/churn-warnings/hit-rate",
    response_model=HitRateOut,
    summary="Precision and recall of the churn warning against the recorded renewal outcomes",
)
async def get_hit_rate(uow: UowDep, lookback_days: Annotated[int, Query(ge=1, le=730)] = 180) -> HitRateOut:
    rate = await lifecycle.warning_hit_rate(uow, lookback_days)
    rules = await lifecycle.health_rules(uow)
    return HitRateOut(
        lookback_days=rate.lookback_days,
        evaluated=rate.evaluated,
        true_positives=rate.true_positives,
        false_positives=rate.false_positives,
        false_negatives=rate.false_negatives,
        true_negatives=rate.true_negatives,
        precision=rate.precision,
        recall=rate.recall,
        rules_version=rules.version,
    )


# --- surveys (staff side) -----------------------------------------------------------------------


class SurveyOut(BaseModel):
    survey_id: str
    account_id: str
    kind: SurveyKind
    ticket_id: str | None
    sent_at: datetime
    expires_at: datetime
    sent_by: str
    answered_at: datetime | None
    score: int | None
    comment: str | None

    @classmethod
    def of(cls, s: Survey) -> SurveyOut:
        return cls.model_validate(asdict(s))


class SentSurveyOut(SurveyOut):
    link: str = Field(description="The customer's link (no login; works once, until expires_at)")


class SurveyList(BaseModel):
    items: list[SurveyOut]
    count: int


class SentList(BaseModel):
    items: list[SentSurveyOut]
    count: int


def _sent(request: Request, sent: lifecycle.SentSurvey) -> SentSurveyOut:
    base: str = request.app.state.survey_base_url
    return SentSurveyOut(**SurveyOut.of(sent.survey).model_dump(), link=f"{base.rstrip('/')}/{sent.token}")


@router.post(
    "/tickets/{ticket_id}/csat-survey",
    response_model=SentSurveyOut,
    status_code=status.HTTP_201_CREATED,
    summary="Send the CSAT survey of a resolved ticket (one per ticket); the customer answers by link",
)
async def post_csat_survey(
    ticket_id: str, request: Request, uow: UowDep, actor: CurrentActor, secret: Secret
) -> SentSurveyOut:
    return _sent(request, await lifecycle.send_csat(uow, ticket_id, secret, actor))


@router.post(
    "/accounts/{account_id}/nps-survey",
    response_model=SentSurveyOut,
    status_code=status.HTTP_201_CREATED,
    summary="Send the account its NPS survey when its schedule says one is due (409 otherwise)",
)
async def post_nps_survey(
    account_id: str, request: Request, uow: UowDep, actor: CurrentActor, secret: Secret
) -> SentSurveyOut:
    return _sent(request, await lifecycle.send_nps(uow, account_id, secret, actor))


@router.post(
    "/surveys/nps/send-due",
    response_model=SentList,
    summary="The scheduled NPS round: a survey for every account of your book that is due one",
)
async def post_nps_round(request: Request, uow: UowDep, actor: CurrentActor, secret: Secret) -> SentList:
    items = [_sent(request, s) for s in await lifecycle.send_due_nps(uow, secret, actor)]
    return SentList(items=items, count=len(items))


@router.get("/accounts/{account_id}/surveys", response_model=SurveyList, summary="The account's surveys")
async def get_surveys(account_id: str, uow: UowDep, actor: CurrentActor) -> SurveyList:
    items = [SurveyOut.of(s) for s in await lifecycle.account_surveys(uow, account_id, actor)]
    return SurveyList(items=items, count=len(items))
