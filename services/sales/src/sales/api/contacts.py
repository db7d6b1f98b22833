"""/contacts: the people sales works with (sales owns contacts), created directly, listed,
searched and exported. One contact per email, as marketing's capture: a second is a 409."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from enum import StrEnum
from typing import Annotated

from crm_platform import audit_api
from crm_platform.csv_stream import Cell, csv_response
from crm_platform.errors import NotFound
from crm_platform.field_rules import refuse_personal_search
from crm_platform.paging import BadCursor, search_words
from crm_platform.routes import CurrentActor, DbDep
from fastapi import APIRouter, Depends, Path, Query, status
from starlette.responses import StreamingResponse

from sales import handlers
from sales import store as repo
from sales.api.accounts import Cursor, Limit, Owner, bad_cursor
from sales.api.deps import UowDep, sales_only
from sales.api.models import ContactIn, ContactOut, ContactPageOut
from sales.domain.access import owner_scope, require_read
from sales.domain.account import DirectSource

router = APIRouter(prefix="/contacts", tags=["contacts"], dependencies=[sales_only])

ContactId = Annotated[str, Path(min_length=1, max_length=100)]
Search = Annotated[str | None, Query(max_length=200, description="words of the name, email or role")]
AccountFilter = Annotated[str | None, Query(max_length=100, description="One account's people")]


class ContactSort(StrEnum):
    NEWEST = "newest"
    OLDEST = "oldest"
    UPDATED = "updated"
    NAME = "name"
    EMAIL = "email"


@router.post(
    "",
    response_model=ContactOut,
    status_code=status.HTTP_201_CREATED,
    summary="Add a contact (referral, outbound): 409 names the contact that has this email",
)
async def create_contact(body: ContactIn, uow: UowDep, actor: CurrentActor) -> ContactOut:
    new = handlers.NewContact(
        str(body.email), body.name, body.source, body.account_id, body.owner, body.phone, body.role
    )
    return ContactOut.of(await handlers.create_contact(uow, new, actor))


SourceFilter = Annotated[
    str | None,
    Query(pattern=f"^({'|'.join([*DirectSource, 'import'])})$", description="How it came in (or import)"),
]


def _query(
    actor: CurrentActor,
    owner: Owner = None,
    account_id: AccountFilter = None,
    source: SourceFilter = None,
    q: Search = None,
    sort: ContactSort = ContactSort.NEWEST,
) -> repo.BookQuery:
    """The list's (and its export's) query, scoped to the actor's book (no search or sort by
    people's names and e-mails for pseudonymised users: crm_platform.field_rules)."""
    refuse_personal_search(actor.roles, {"query.q": q, "query.sort": sort == ContactSort.NAME})
    return repo.BookQuery(owner=owner_scope(actor, owner), source=source, account_id=account_id,
                          q=search_words(q), sort=sort.value)  # fmt: skip


QueryDep = Annotated[repo.BookQuery, Depends(_query)]


@router.get("", response_model=ContactPageOut, summary="Contacts: a rep's own book, managers the team's")
async def list_contacts(
    db: DbDep, query: QueryDep, limit: Limit = 50, cursor: Cursor = None
) -> ContactPageOut:
    try:
        items, next_cursor = await repo.list_contacts(db, query, limit=limit, cursor=cursor)
    except BadCursor as exc:
        raise bad_cursor(exc) from None
    return ContactPageOut(items=[ContactOut.of(c) for c in items], limit=limit, next_cursor=next_cursor)


EXPORT_COLUMNS = (
    "id", "email", "name", "phone", "role", "account_id", "owner", "source", "created_at", "updated_at",
)  # fmt: skip


@router.get(
    "/export",
    response_class=StreamingResponse,
    summary="The contacts the list's filters select, as CSV (streamed)",
    responses={200: {"content": {"text/csv": {}}, "description": "one row per contact"}},
)
async def export_contacts(db: DbDep, query: QueryDep) -> StreamingResponse:
    contacts = repo.export_contacts(db, query)

    async def rows() -> AsyncIterator[Sequence[Cell]]:
        async for c in contacts:
            yield (c.id, c.email, c.name, c.phone, c.role, c.account_id, c.owner, c.source, c.created_at,
                   c.updated_at)  # fmt: skip

    return csv_response("contacts.csv", EXPORT_COLUMNS, rows())


@router.get("/{contact_id}", response_model=ContactOut, summary="One contact")
async def get_contact(contact_id: ContactId, db: DbDep, actor: CurrentActor) -> ContactOut:
    contact = await repo.get_contact(db, contact_id)
    if contact is None:
        raise NotFound(f"no contact {contact_id!r}", contact_id=contact_id)
    require_read(actor, contact.owner, "contact")
    return ContactOut.of(contact)


@router.get("/{contact_id}/history", response_model=audit_api.AuditPageOut, summary="A contact's changes")
async def contact_history(
    contact_id: ContactId,
    db: DbDep,
    actor: CurrentActor,
    limit: audit_api.Limit = 50,
    cursor: audit_api.Cursor = None,
) -> audit_api.AuditPageOut:
    await get_contact(contact_id, db, actor)
    return await audit_api.history_out(db, repo.CONTACTS, contact_id, limit, cursor)
