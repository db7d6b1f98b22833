"""Accounts: onboarding checklist, commitments from sales, upsell/renewal signals."""

from __future__ import annotations

from typing import Annotated

from crm_platform import audit_api
from crm_platform.routes import CurrentActor, DbDep
from fastapi import APIRouter, Query, status
from pydantic import BaseModel

from service_desk import store
from service_desk.api.deps import ROSTER_EDITING, SERVICE_DESK_ROLES, Success, UowDep
from service_desk.api.models import (
    AccountOut,
    AssignCsmIn,
    CommitmentOut,
    FlagIn,
    SignalIn,
    SignalOut,
)
from service_desk.domain.access import book_of
from service_desk.domain.accounts import OnboardingStatus
from service_desk.handlers import accounts as handlers

router = APIRouter(prefix="/accounts", tags=["accounts"], dependencies=[SERVICE_DESK_ROLES])


class AccountList(BaseModel):
    items: list[AccountOut]
    count: int


@router.get(
    "", response_model=AccountList, summary="Accounts (a CSM sees their own; reps and admins see all)"
)
async def list_accounts(
    db: DbDep,
    actor: CurrentActor,
    success: Success,
    csm: Annotated[str | None, Query(max_length=100)] = None,
    onboarding_status: OnboardingStatus | None = None,
    deal_id: Annotated[str | None, Query(max_length=100, description="The won deal's id")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> AccountList:
    allowed, member = book_of(actor, csm)
    found = (
        await store.list_accounts(
            db, member=member, onboarding=onboarding_status, deal_id=deal_id, limit=limit
        )
        if allowed
        else []
    )
    return AccountList(items=[AccountOut.of(a, success) for a in found], count=len(found))


@router.get("/{account_id}", response_model=AccountOut)
async def get_account(account_id: str, uow: UowDep, actor: CurrentActor, success: Success) -> AccountOut:
    return AccountOut.of(await handlers.get_account(uow, account_id, actor), success)


@router.post(
    "/{account_id}/checklist/{item}/complete",
    response_model=AccountOut,
    summary="Complete one onboarding item (all done -> onboarding completed)",
)
async def complete_item(
    account_id: str, item: str, uow: UowDep, actor: CurrentActor, success: Success
) -> AccountOut:
    return AccountOut.of(await handlers.complete_checklist_item(uow, account_id, item, actor), success)


@router.put(
    "/{account_id}/csm",
    response_model=AccountOut,
    summary="Hand the account to another CSM",
    dependencies=[ROSTER_EDITING],
)
async def assign_csm(
    account_id: str, body: AssignCsmIn, uow: UowDep, actor: CurrentActor, success: Success
) -> AccountOut:
    return AccountOut.of(await handlers.assign_csm(uow, account_id, body.user_id.strip(), actor), success)


@router.post(
    "/{account_id}/signals",
    response_model=SignalOut,
    status_code=status.HTTP_201_CREATED,
    summary="Hand an upsell or renewal chance to sales (upsell.spotted)",
)
async def spot_signal(account_id: str, body: SignalIn, uow: UowDep, actor: CurrentActor) -> SignalOut:
    signal = await handlers.spot_signal(
        uow, account_id, body.kind, body.description, body.estimated_value, actor
    )
    return SignalOut.of(signal)


@router.post(
    "/{account_id}/commitments/{commitment_id}/flag",
    response_model=CommitmentOut,
    summary="Flag a commitment sales made that cannot be delivered (commitment.flagged)",
)
async def flag_commitment(
    account_id: str, commitment_id: str, body: FlagIn, uow: UowDep, actor: CurrentActor
) -> CommitmentOut:
    return CommitmentOut.of(
        await handlers.flag_commitment(uow, account_id, commitment_id, body.reason, actor)
    )


@router.post(
    "/{account_id}/commitments/{commitment_id}/deliver",
    response_model=CommitmentOut,
    summary="Mark a commitment delivered",
)
async def deliver_commitment(
    account_id: str, commitment_id: str, uow: UowDep, actor: CurrentActor
) -> CommitmentOut:
    return CommitmentOut.of(await handlers.deliver_commitment(uow, account_id, commitment_id, actor))


@router.get(
    "/{account_id}/history",
    response_model=audit_api.AuditPageOut,
    summary="The account's changes, newest first: who (a user, or the deal.won that opened it), when, "
    "each field before and after",
)
async def account_history(
    account_id: str,
    uow: UowDep,
    db: DbDep,
    actor: CurrentActor,
    limit: audit_api.Limit = 50,
    cursor: audit_api.Cursor = None,
) -> audit_api.AuditPageOut:
    await handlers.get_account(uow, account_id, actor)  # 404, or 403 outside the actor's book
    return await audit_api.history_out(db, store.ACCOUNTS, account_id, limit, cursor)
