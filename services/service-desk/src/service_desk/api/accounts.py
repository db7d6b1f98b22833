"""Accounts: onboarding checklist, commitments from sales, upsell/renewal signals."""

from __future__ import annotations

from typing import Annotated

from crm_platform.auth import CurrentUser, require_roles
from fastapi import APIRouter, Query, status
from pydantic import BaseModel

from service_desk.api.deps import SERVICE_DESK_ROLES, Desk, Success
from service_desk.api.models import (
    AccountOut,
    AssignCsmIn,
    CommitmentOut,
    FlagIn,
    SignalIn,
    SignalOut,
)
from service_desk.domain.access import ROSTER_EDITORS
from service_desk.domain.accounts import OnboardingStatus

router = APIRouter(prefix="/accounts", tags=["accounts"], dependencies=[SERVICE_DESK_ROLES])


class AccountList(BaseModel):
    items: list[AccountOut]
    count: int


@router.get(
    "", response_model=AccountList, summary="Accounts (a CSM sees their own; reps and admins see all)"
)
async def list_accounts(
    desk: Desk,
    user: CurrentUser,
    success: Success,
    csm: Annotated[str | None, Query(max_length=100)] = None,
    onboarding_status: OnboardingStatus | None = None,
    deal_id: Annotated[str | None, Query(max_length=100, description="The won deal's id")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> AccountList:
    accounts = await desk.list_accounts(
        user, csm=csm, onboarding=onboarding_status, deal_id=deal_id, limit=limit
    )
    return AccountList(items=[AccountOut.of(a, success) for a in accounts], count=len(accounts))


@router.get("/{account_id}", response_model=AccountOut)
async def get_account(account_id: str, desk: Desk, user: CurrentUser, success: Success) -> AccountOut:
    return AccountOut.of(await desk.get_account(user, account_id), success)


@router.post(
    "/{account_id}/checklist/{item}/complete",
    response_model=AccountOut,
    summary="Complete one onboarding item (all done -> onboarding completed)",
)
async def complete_item(
    account_id: str, item: str, desk: Desk, user: CurrentUser, success: Success
) -> AccountOut:
    return AccountOut.of(await desk.complete_checklist_item(user, account_id, item), success)


@router.put(
    "/{account_id}/csm",
    response_model=AccountOut,
    summary="Hand the account to another CSM",
    dependencies=[require_roles(*sorted(ROSTER_EDITORS))],
)
async def assign_csm(
    account_id: str, body: AssignCsmIn, desk: Desk, user: CurrentUser, success: Success
) -> AccountOut:
    return AccountOut.of(await desk.assign_csm(user, account_id, body.user_id.strip()), success)


@router.post(
    "/{account_id}/signals",
    response_model=SignalOut,
    status_code=status.HTTP_201_CREATED,
    summary="Hand an upsell or renewal chance to sales (upsell.spotted)",
)
async def spot_signal(account_id: str, body: SignalIn, desk: Desk, user: CurrentUser) -> SignalOut:
    signal = await desk.spot_signal(
        user, account_id, kind=body.kind, description=body.description, estimated_value=body.estimated_value
    )
    return SignalOut.of(signal)


@router.post(
    "/{account_id}/commitments/{commitment_id}/flag",
    response_model=CommitmentOut,
    summary="Flag a commitment sales made that cannot be delivered (commitment.flagged)",
)
async def flag_commitment(
    account_id: str, commitment_id: str, body: FlagIn, desk: Desk, user: CurrentUser
) -> CommitmentOut:
    return CommitmentOut.of(await desk.flag_commitment(user, account_id, commitment_id, body.reason))


@router.post(
    "/{account_id}/commitments/{commitment_id}/deliver",
    response_model=CommitmentOut,
    summary="Mark a commitment delivered",
)
async def deliver_commitment(
    account_id: str, commitment_id: str, desk: Desk, user: CurrentUser
) -> CommitmentOut:
    return CommitmentOut.of(await desk.deliver_commitment(user, account_id, commitment_id))
