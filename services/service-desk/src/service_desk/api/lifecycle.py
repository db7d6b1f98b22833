"""Accounts over their whole life: success config, tiers, account managers, renewals."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Annotated

from crm_contracts.events.service_desk import ChurnReason, RenewalOutcome
from crm_platform.money import Amount, StoredAmount
from crm_platform.routes import CurrentActor
from crm_platform.values import Timestamp
from fastapi import APIRouter, Query, status
from pydantic import BaseModel, Field

from service_desk.api.deps import ADMINS, CSM_LEADS, SERVICE_DESK_ROLES, Success, UowDep
from service_desk.api.models import AccountOut, Body, TermOut
from service_desk.domain.renewals import RenewalDecision, RenewalDue, RenewalRecord
from service_desk.domain.success_config import SuccessConfig, SuccessConfigRecord
from service_desk.handlers import success as lifecycle

router = APIRouter(tags=["customer success"], dependencies=[SERVICE_DESK_ROLES])


# --- config -------------------------------------------------------------------------------------


class SuccessConfigOut(SuccessConfig):
    updated_at: datetime | None = None
    updated_by: str | None = None

    @classmethod
    def of(cls, record: SuccessConfigRecord) -> SuccessConfigOut:
        return cls(**record.config.model_dump(), updated_at=record.updated_at, updated_by=record.updated_by)


@router.get("/success/config", response_model=SuccessConfigOut, summary="Tiers, cadences, renewal window")
async def get_success_config(uow: UowDep) -> SuccessConfigOut:
    return SuccessConfigOut.of(await lifecycle.success_config(uow))


@router.put(
    "/success/config",
    response_model=SuccessConfigOut,
    summary="Replace the customer success configuration (tiers apply to accounts created afterwards)",
    dependencies=[ADMINS],
)
async def put_success_config(body: SuccessConfig, uow: UowDep, actor: CurrentActor) -> SuccessConfigOut:
    return SuccessConfigOut.of(await lifecycle.replace_success_config(uow, body, actor))


# --- tiers and account managers -----------------------------------------------------------------


class TierIn(Body):
    tier: str = Field(min_length=1, max_length=50, description="A configured tier's name")


class AccountManagerIn(Body):
    user_id: str | None = Field(
        min_length=1, max_length=100, description="An active CSM's user id; null removes the account manager"
    )
    reason: str | None = Field(default=None, max_length=1000)


@router.put(
    "/accounts/{account_id}/tier",
    response_model=AccountOut,
    summary="Move the account to another tier (recorded)",
    dependencies=[CSM_LEADS],
)
async def put_tier(
    account_id: str, body: TierIn, uow: UowDep, actor: CurrentActor, success: Success
) -> AccountOut:
    return AccountOut.of(await lifecycle.change_tier(uow, account_id, body.tier.strip(), actor), success)


@router.put(
    "/accounts/{account_id}/account-manager",
    response_model=AccountOut,
    summary="Name the account manager (reassignment recorded)",
    dependencies=[CSM_LEADS],
)
async def put_account_manager(
    account_id: str, body: AccountManagerIn, uow: UowDep, actor: CurrentActor, success: Success
) -> AccountOut:
    manager = body.user_id.strip() if body.user_id else None
    account = await lifecycle.assign_account_manager(uow, account_id, manager or None, body.reason, actor)
    return AccountOut.of(account, success)


# --- renewals -----------------------------------------------------------------------------------


class RenewalIn(Body):
    outcome: RenewalOutcome
    new_value: Amount | None = Field(default=None, description="Renewed/downgraded: the new term's value")
    new_term_months: int | None = Field(default=None, ge=1, le=120)
    new_term_start: Timestamp | None = Field(
        default=None, description="Default: the renewal date that was due"
    )
    churn_reason: ChurnReason | None = Field(default=None, description="Churned: why")
    notes: str | None = Field(default=None, max_length=4000)


class RenewalOut(BaseModel):
    renewal_id: str
    account_id: str
    outcome: RenewalOutcome
    due_date: datetime
    previous_value: StoredAmount
    currency: str
    new_term: TermOut | None
    churn_reason: ChurnReason | None
    notes: str | None
    tier: str
    account_manager: str | None
    recorded_by: str
    recorded_at: datetime

    @classmethod
    def of(cls, r: RenewalRecord) -> RenewalOut:
        return cls(
            **{k: v for k, v in asdict(r).items() if k not in ("new_term", "previous_amount", "deal_id")},
            previous_value=r.previous_amount,
            new_term=TermOut.of(r.new_term) if r.new_term else None,
        )


class RenewalList(BaseModel):
    items: list[RenewalOut]
    count: int


class RenewalDueOut(BaseModel):
    account_id: str
    account_name: str
    tier: str
    account_manager: str | None
    csm: str | None
    renewal_date: datetime
    days_left: int
    overdue: bool
    value: TermOut
    at_risk: bool = Field(
        description="Due within the health rules' renewal_at_risk_days on an account showing a risk"
    )
    risk_reasons: list[str] = Field(
        description="Why: low_health, falling_trend, detractor_nps, open_flags, repeated_sla_breaches"
    )

    @classmethod
    def of(cls, d: RenewalDue) -> RenewalDueOut:
        a = d.account
        assert a.term is not None
        return cls(
            account_id=a.account_id,
            account_name=a.name,
            tier=a.tier,
            account_manager=a.account_manager,
            csm=a.csm,
            renewal_date=d.due_date,
            days_left=d.days_left,
            overdue=d.overdue,
            value=TermOut.of(a.term),
            at_risk=d.at_risk,
            risk_reasons=list(d.risks),
        )


class RenewalsDue(BaseModel):
    window_days: int
    items: list[RenewalDueOut]
    count: int


@router.get(
    "/renewals",
    response_model=RenewalsDue,
    summary="The renewal list: renewals due within the window (overdue first); a CSM's own accounts",
)
async def list_renewals(
    uow: UowDep,
    actor: CurrentActor,
    success: Success,
    manager: Annotated[str | None, Query(max_length=100, description="An account manager's user id")] = None,
    window_days: Annotated[int | None, Query(ge=1, le=730)] = None,
) -> RenewalsDue:
    due = await lifecycle.renewals_due(uow, manager, window_days, actor)
    items = [RenewalDueOut.of(d) for d in due]
    return RenewalsDue(window_days=window_days or success.renewal_window_days, items=items, count=len(items))


@router.post(
    "/accounts/{account_id}/renewals",
    response_model=RenewalOut,
    status_code=status.HTTP_201_CREATED,
    summary="Record the renewal's outcome (account.renewal_recorded)",
)
async def post_renewal(account_id: str, body: RenewalIn, uow: UowDep, actor: CurrentActor) -> RenewalOut:
    decision = RenewalDecision(
        outcome=body.outcome,
        new_amount=body.new_value,
        new_months=body.new_term_months,
        new_start=body.new_term_start,
        churn_reason=body.churn_reason,
        notes=body.notes,
    )
    return RenewalOut.of(await lifecycle.record_renewal_outcome(uow, account_id, decision, actor))


@router.get("/accounts/{account_id}/renewals", response_model=RenewalList, summary="The account's renewals")
async def get_renewals(account_id: str, uow: UowDep, actor: CurrentActor) -> RenewalList:
    records = await lifecycle.account_renewals(uow, account_id, actor)
    return RenewalList(items=[RenewalOut.of(r) for r in records], count=len(records))
