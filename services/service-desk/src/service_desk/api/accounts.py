"""Accounts: onboarding checklist, commitments from sales, upsell/renewal signals."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from enum import StrEnum
from typing import Annotated

from crm_platform import audit_api
from crm_platform.csv_stream import Cell, csv_response
from crm_platform.errors import RuleViolation
from crm_platform.field_rules import refuse_personal_search
from crm_platform.paging import BadCursor, search_words
from crm_platform.routes import CurrentActor, DbDep
from fastapi import APIRouter, Depends, Query, status
from pydantic import BaseModel, Field
from starlette.responses import StreamingResponse

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
from service_desk.domain.accounts import AccountStatus, OnboardingStatus
from service_desk.handlers import accounts as handlers

router = APIRouter(prefix="/accounts", tags=["accounts"], dependencies=[SERVICE_DESK_ROLES])


class AccountList(BaseModel):
    items: list[AccountOut]
    count: int
    next_cursor: str | None = Field(
        default=None, description="Pass as ?cursor= for the next page; null: the last page"
    )


class AccountSort(StrEnum):
    NEWEST = "newest"
    OLDEST = "oldest"
    NAME = "name"
    RENEWAL = "renewal"


def bad_cursor(exc: BadCursor) -> RuleViolation:
    return RuleViolation(f"invalid input: query.cursor: {exc}", field="query.cursor")


Csm = Annotated[str | None, Query(max_length=100, description="One CSM's book (a CSM: only their own)")]
DealId = Annotated[str | None, Query(max_length=100, description="The won deal's id")]
Tier = Annotated[str | None, Query(max_length=40)]
Search = Annotated[
    str | None, Query(max_length=200, description="words of the name or the contacts' names and emails")
]
Cursor = Annotated[str | None, Query(max_length=500, description="next_cursor of the previous page")]


def _query(
    actor: CurrentActor,
    csm: Csm = None,
    onboarding_status: OnboardingStatus | None = None,
    deal_id: DealId = None,
    status_: Annotated[AccountStatus | None, Query(alias="status")] = None,
    tier: Tier = None,
    q: Search = None,
    sort: AccountSort = AccountSort.NEWEST,
) -> store.AccountQuery | None:
    """The list's (and its export's) query, or None when the actor may see none of what was asked
    (no search by contacts' names and e-mails for pseudonymised users: crm_platform.field_rules)."""
    refuse_personal_search(actor.roles, {"query.q": q})
    allowed, member = book_of(actor, csm)
    if not allowed:
        return None
    return store.AccountQuery(
        member=member,
        onboarding=onboarding_status.value if onboarding_status else None,
        deal_id=deal_id,
        status=status_.value if status_ else None,
        tier=tier,
        q=search_words(q),
        sort=sort.value,
    )


QueryDep = Annotated[store.AccountQuery | None, Depends(_query)]


@router.get(
    "", response_model=AccountList, summary="Accounts (a CSM sees their own; reps and admins see all)"
)
async def list_accounts(
    db: DbDep,
    success: Success,
    query: QueryDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Cursor = None,
) -> AccountList:
    if query is None:
        return AccountList(items=[], count=0)
    try:
        found, next_cursor = await store.list_accounts(db, query, limit=limit, cursor=cursor)
    except BadCursor as exc:
        raise bad_cursor(exc) from None
    return AccountList(
        items=[AccountOut.of(a, success) for a in found], count=len(found), next_cursor=next_cursor
    )


EXPORT_COLUMNS = (
    "id", "name", "deal_id", "status", "tier", "csm", "account_manager", "sales_owner", "onboarding_status",
    "value", "currency", "renewal_date", "won_at", "created_at",
)  # fmt: skip


@router.get(
    "/export",
    response_class=StreamingResponse,
    summary="The accounts the list's filters select, as CSV (streamed)",
    responses={200: {"content": {"text/csv": {}}, "description": "one row per account"}},
)
async def export_accounts(db: DbDep, query: QueryDep) -> StreamingResponse:

    async def rows() -> AsyncIterator[Sequence[Cell]]:
        if query is None:
            return
        async for a in store.export_accounts(db, query):
            yield (
                a.account_id, a.name, a.deal_id, a.status.value, a.tier, a.csm, a.account_manager,
                a.sales_owner, a.onboarding.status.value, a.value.amount, a.value.currency,
                a.term.renewal_date if a.term else None, a.won_at, a.created_at,
            )  # fmt: skip

    return csv_response("accounts.csv", EXPORT_COLUMNS, rows())


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
