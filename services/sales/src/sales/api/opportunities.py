"""/opportunities: the pipeline's deals, their stage moves and logged activities."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from enum import StrEnum
from typing import Annotated

from crm_platform import audit_api
from crm_platform.csv_stream import Cell, csv_response
from crm_platform.custom_fields import FieldSet, RecordType, export_cells, export_columns, filter_of
from crm_platform.custom_fields_api import CustomFilter, fields_of
from crm_platform.errors import NotFound, RuleViolation
from crm_platform.field_rules import refuse_personal_search
from crm_platform.paging import BadCursor, search_words
from crm_platform.routes import CurrentActor, DbDep
from fastapi import APIRouter, Depends, Path, Query, status
from starlette.responses import StreamingResponse

from sales import handlers
from sales import store as repo
from sales.api.deps import OpportunityId, UowDep, sales_only
from sales.api.models import (
    ActivityIn,
    ActivityOut,
    FieldsUpdateIn,
    FlagResolutionIn,
    OpportunityIn,
    OpportunityOut,
    OpportunityPageOut,
    StageMoveIn,
)
from sales.domain.access import owner_scope, require_read
from sales.domain.opportunity import OpportunityStatus, Origin

OpportunityFields = Annotated[FieldSet, fields_of(RecordType.OPPORTUNITY)]
router = APIRouter(prefix="/opportunities", tags=["opportunities"], dependencies=[sales_only])


class OpportunitySort(StrEnum):
    NEWEST = "newest"
    OLDEST = "oldest"
    UPDATED = "updated"
    AMOUNT = "amount"


def _query(
    actor: CurrentActor,
    fields: OpportunityFields,
    stage: Annotated[str | None, Query(max_length=40)] = None,
    status_: Annotated[OpportunityStatus | None, Query(alias="status")] = None,
    origin: Annotated[Origin | None, Query()] = None,
    flagged: Annotated[bool | None, Query(description="Has a commitment flagged by customer success")] = None,
    owner: Annotated[str | None, Query(max_length=100, description="Managers: one rep's book")] = None,
    q: Annotated[
        str | None,
        Query(max_length=200, description="words of the account, description or contacts (all must match)"),
    ] = None,
    sort: Annotated[OpportunitySort, Query(description="newest (default), oldest, updated, amount")] = (
        OpportunitySort.NEWEST
    ),
    cf: CustomFilter = None,
) -> repo.OpportunityQuery:
    """The list's (and its export's) query, scoped to the actor's book (no search by contacts'
    names and e-mails, nor text custom fields, for pseudonymised users: crm_platform.field_rules)."""
    refuse_personal_search(actor.roles, {"query.q": q})
    return repo.OpportunityQuery(
        owner=owner_scope(actor, owner),
        stage=stage,
        status=status_.value if status_ else None,
        origin=origin.value if origin else None,
        flagged=flagged,
        q=search_words(q),
        sort=sort.value,
        custom=filter_of(fields, cf, roles=actor.roles),
    )


QueryDep = Annotated[repo.OpportunityQuery, Depends(_query)]


@router.get(
    "",
    response_model=OpportunityPageOut,
    summary="Opportunities, newest first: a rep sees their own book, managers the team",
)
async def list_opportunities(
    db: DbDep,
    query: QueryDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[
        str | None, Query(max_length=500, description="next_cursor of the previous page")
    ] = None,
    offset: Annotated[
        int, Query(ge=0, le=100_000, description="ignored with a cursor; prefer the cursor")
    ] = 0,
) -> OpportunityPageOut:
    try:
        found = await repo.list_opportunities(db, query, limit=limit, offset=offset, cursor=cursor)
    except BadCursor as exc:
        raise RuleViolation(f"invalid input: query.cursor: {exc}", field="query.cursor") from None
    return OpportunityPageOut(
        items=[OpportunityOut.of(o) for o in found.items],
        total=found.total,
        limit=limit,
        offset=0 if cursor else offset,
        next_cursor=found.next_cursor,
    )


EXPORT_COLUMNS = (
    "id", "account_name", "origin", "stage", "status", "owner", "amount", "currency", "account_id", "lead_id",
    "direct_source", "activity_count", "last_activity_at", "created_at", "updated_at", "won_at", "lost_at",
    "lost_reason",
)  # fmt: skip


@router.get(
    "/export",
    response_class=StreamingResponse,
    summary="The opportunities the list's filters select, as CSV (streamed)",
    responses={200: {"content": {"text/csv": {}}, "description": "one row per opportunity"}},
)
async def export_opportunities(db: DbDep, query: QueryDep, fields: OpportunityFields) -> StreamingResponse:
    async def rows() -> AsyncIterator[Sequence[Cell]]:
        async for o in repo.export_opportunities(db, query):
            yield (
                o.id, o.account_name, o.origin.value, o.stage, o.status.value, o.owner, o.amount, o.currency,
                o.account_id, o.lead_id, o.direct_source, o.activity_count, o.last_activity_at, o.created_at,
                o.updated_at, o.won_at, o.lost_at, o.lost_reason, *export_cells(fields, o.custom),
            )  # fmt: skip

    return csv_response("opportunities.csv", EXPORT_COLUMNS + export_columns(fields), rows())


@router.post(
    "",
    response_model=OpportunityOut,
    status_code=status.HTTP_201_CREATED,
    summary="Open an opportunity directly (referral, outbound) for an account; reaches analytics and, "
    "once won, customer success like any deal",
)
async def create_opportunity(
    body: OpportunityIn, uow: UowDep, actor: CurrentActor, fields: OpportunityFields
) -> OpportunityOut:
    new = handlers.NewOpportunity(
        body.account_id, body.source, tuple(body.contact_ids), body.owner, body.description,
        fields.create(body.custom), fields,
    )  # fmt: skip
    return OpportunityOut.of(await handlers.create_opportunity(uow, new, actor))


@router.get(
    "/{opportunity_id}",
    response_model=OpportunityOut,
    summary="One opportunity with its activities, stage history, commitment flags and review verdict",
)
async def get_opportunity(opportunity_id: OpportunityId, db: DbDep, actor: CurrentActor) -> OpportunityOut:
    opp = await repo.get_opportunity(db, opportunity_id)
    if opp is None:
        raise NotFound(f"no opportunity {opportunity_id!r}", opportunity_id=opportunity_id)
    require_read(actor, opp.owner, "opportunity")
    blocked = opp.win_blocked_by(await repo.get_review_policy(db))
    return OpportunityOut.of(opp, await repo.activities_for(db, opportunity_id), win_blocked_by=blocked)


@router.post(
    "/{opportunity_id}/stage",
    response_model=OpportunityOut,
    summary="Move to a stage, setting fields; 422 lists the required fields still missing",
)
async def move_stage(
    opportunity_id: OpportunityId, body: StageMoveIn, uow: UowDep, actor: CurrentActor
) -> OpportunityOut:
    result = await handlers.move_stage(
        uow,
        opportunity_id,
        body.stage,
        body.fields.values(),
        [c.model_dump(mode="json") for c in body.contacts],
        actor,
    )
    return OpportunityOut.of(result)


@router.patch(
    "/{opportunity_id}",
    response_model=OpportunityOut,
    summary="Set fields, custom fields or add contacts on an open opportunity without moving it",
)
async def update_fields(
    opportunity_id: OpportunityId,
    body: FieldsUpdateIn,
    uow: UowDep,
    actor: CurrentActor,
    custom_fields: OpportunityFields,
) -> OpportunityOut:
    result = await handlers.update_fields(
        uow,
        opportunity_id,
        body.fields.values(),
        [c.model_dump(mode="json") for c in body.contacts],
        actor,
        None if body.custom is None else handlers.CustomEdit(custom_fields, body.custom),
    )
    return OpportunityOut.of(result)


@router.post(
    "/{opportunity_id}/activities",
    response_model=ActivityOut,
    status_code=status.HTTP_201_CREATED,
    summary="Log a call, visit, email or quote (quotes may carry an amount)",
)
async def log_activity(
    opportunity_id: OpportunityId, body: ActivityIn, uow: UowDep, actor: CurrentActor
) -> ActivityOut:
    result = await handlers.log_activity(
        uow,
        opportunity_id,
        body.type,
        body.summary,
        actor,
        occurred_at=body.occurred_at,
        amount=body.amount,
        currency=body.currency,
    )
    return ActivityOut.of(result)


@router.post(
    "/{opportunity_id}/commitment-review",
    response_model=OpportunityOut,
    summary="Ask customer success to review the commitments (required before winning a deal over "
    "the review threshold); the verdict shows on the opportunity",
)
async def request_review(opportunity_id: OpportunityId, uow: UowDep, actor: CurrentActor) -> OpportunityOut:
    return OpportunityOut.of(await handlers.request_review(uow, opportunity_id, actor))


@router.get(
    "/{opportunity_id}/history",
    response_model=audit_api.AuditPageOut,
    summary="An opportunity's changes, newest first: who, when, each field before and after",
)
async def opportunity_history(
    opportunity_id: OpportunityId,
    db: DbDep,
    actor: CurrentActor,
    limit: audit_api.Limit = 50,
    cursor: audit_api.Cursor = None,
) -> audit_api.AuditPageOut:
    opp = await repo.get_opportunity(db, opportunity_id)
    if opp is None:
        raise NotFound(f"no opportunity {opportunity_id!r}", opportunity_id=opportunity_id)
    require_read(actor, opp.owner, "opportunity")
    return await audit_api.history_out(db, repo.OPPORTUNITIES, opportunity_id, limit, cursor)


FlagId = Annotated[str, Path(min_length=1, max_length=100, description="The flag's id (commitment.flagged)")]


@router.post(
    "/{opportunity_id}/commitment-flags/{flag_id}/acknowledge",
    response_model=OpportunityOut,
    summary="After the win: acknowledge a commitment customer success flagged (sent back to the desk)",
)
async def acknowledge_flag(
    opportunity_id: OpportunityId, flag_id: FlagId, uow: UowDep, actor: CurrentActor
) -> OpportunityOut:
    return OpportunityOut.of(await handlers.acknowledge_flag(uow, opportunity_id, flag_id, actor))


@router.post(
    "/{opportunity_id}/commitment-flags/{flag_id}/resolve",
    response_model=OpportunityOut,
    summary="After the win: resolve a flagged commitment, saying how; the account at the desk shows it",
)
async def resolve_flag(
    opportunity_id: OpportunityId, flag_id: FlagId, body: FlagResolutionIn, uow: UowDep, actor: CurrentActor
) -> OpportunityOut:
    return OpportunityOut.of(
        await handlers.resolve_flag(uow, opportunity_id, flag_id, body.resolution, actor)
    )
