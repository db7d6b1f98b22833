"""/accounts: the companies sales opens itself (referrals, outbound), listed, searched and exported.

A rep creates and sees the accounts in their own book; managers and admins the team's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from enum import StrEnum
from typing import Annotated

from crm_platform import audit_api
from crm_platform.csv_stream import Cell, csv_response
from crm_platform.custom_fields import FieldSet, RecordType, export_cells, export_columns, filter_of
from crm_platform.custom_fields_api import CustomFilter, fields_of
from crm_platform.errors import NotFound, RuleViolation
from crm_platform.paging import BadCursor, search_words
from crm_platform.routes import CurrentActor, DbDep
from fastapi import APIRouter, Depends, Path, Query, status
from starlette.responses import StreamingResponse

from sales import handlers
from sales import store as repo
from sales.api.deps import UowDep, sales_only
from sales.api.models import AccountIn, AccountOut, AccountPageOut
from sales.domain.access import owner_scope, require_read
from sales.domain.account import Account, DirectSource

AccountFields = Annotated[FieldSet, fields_of(RecordType.ACCOUNT)]
router = APIRouter(prefix="/accounts", tags=["accounts"], dependencies=[sales_only])

AccountId = Annotated[str, Path(min_length=1, max_length=100)]
Search = Annotated[str | None, Query(max_length=200, description="words of the name, industry or website")]
Owner = Annotated[str | None, Query(max_length=100, description="Managers: one rep's book")]
Limit = Annotated[int, Query(ge=1, le=200)]
Cursor = Annotated[str | None, Query(max_length=500, description="next_cursor of the previous page")]


class AccountSort(StrEnum):
    NEWEST = "newest"
    OLDEST = "oldest"
    UPDATED = "updated"
    NAME = "name"


def bad_cursor(exc: BadCursor) -> RuleViolation:
    return RuleViolation(f"invalid input: query.cursor: {exc}", field="query.cursor")


@router.post(
    "",
    response_model=AccountOut,
    status_code=status.HTTP_201_CREATED,
    summary="Open an account (referral, outbound): 409 names the account of the same name",
)
async def create_account(
    body: AccountIn, uow: UowDep, actor: CurrentActor, fields: AccountFields
) -> AccountOut:
    website = str(body.website) if body.website else None
    new = handlers.NewAccount(
        body.name, body.source, body.owner, body.industry, website, fields.create(body.custom), fields
    )
    return AccountOut.of(await handlers.create_account(uow, new, actor))


def _query(
    actor: CurrentActor,
    fields: AccountFields,
    owner: Owner = None,
    source: DirectSource | None = None,
    q: Search = None,
    sort: AccountSort = AccountSort.NEWEST,
    cf: CustomFilter = None,
) -> repo.BookQuery:
    """The list's (and its export's) query, scoped to the actor's book."""
    custom = filter_of(fields, cf, roles=actor.roles)  # text custom fields: not for pseudonymised users
    return repo.BookQuery(owner=owner_scope(actor, owner), source=source.value if source else None,
                          q=search_words(q), sort=sort.value, custom=custom)  # fmt: skip


QueryDep = Annotated[repo.BookQuery, Depends(_query)]


@router.get("", response_model=AccountPageOut, summary="Accounts: a rep's own book, managers the team's")
async def list_accounts(
    db: DbDep, query: QueryDep, limit: Limit = 50, cursor: Cursor = None
) -> AccountPageOut:
    try:
        items, next_cursor = await repo.list_accounts(db, query, limit=limit, cursor=cursor)
    except BadCursor as exc:
        raise bad_cursor(exc) from None
    return AccountPageOut(items=[AccountOut.of(a) for a in items], limit=limit, next_cursor=next_cursor)


EXPORT_COLUMNS = (
    "id",
    "name",
    "owner",
    "source",
    "industry",
    "website",
    "created_by",
    "created_at",
    "updated_at",
)


@router.get(
    "/export",
    response_class=StreamingResponse,
    summary="The accounts the list's filters select, as CSV (streamed)",
    responses={200: {"content": {"text/csv": {}}, "description": "one row per account"}},
)
async def export_accounts(db: DbDep, query: QueryDep, fields: AccountFields) -> StreamingResponse:
    accounts = repo.export_accounts(db, query)

    async def rows() -> AsyncIterator[Sequence[Cell]]:
        async for a in accounts:
            yield (a.id, a.name, a.owner, a.source.value, a.industry, a.website, a.created_by, a.created_at,
                   a.updated_at, *export_cells(fields, a.custom))  # fmt: skip

    return csv_response("accounts.csv", EXPORT_COLUMNS + export_columns(fields), rows())


async def _readable(db: DbDep, actor: CurrentActor, account_id: str) -> Account:
    account = await repo.get_account(db, account_id)
    if account is None:
        raise NotFound(f"no account {account_id!r}", account_id=account_id)
    require_read(actor, account.owner, "account")
    return account


@router.get("/{account_id}", response_model=AccountOut, summary="One account")
async def get_account(account_id: AccountId, db: DbDep, actor: CurrentActor) -> AccountOut:
    return AccountOut.of(await _readable(db, actor, account_id))


@router.get("/{account_id}/history", response_model=audit_api.AuditPageOut, summary="An account's changes")
async def account_history(
    account_id: AccountId,
    db: DbDep,
    actor: CurrentActor,
    limit: audit_api.Limit = 50,
    cursor: audit_api.Cursor = None,
) -> audit_api.AuditPageOut:
    await _readable(db, actor, account_id)
    return await audit_api.history_out(db, repo.ACCOUNTS, account_id, limit, cursor)
