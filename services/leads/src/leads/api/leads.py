"""/leads: capture (with duplicate merge), read, list, and record behaviour."""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated, Any

from crm_contracts.events.common import Behaviour
from crm_platform import audit_api
from crm_platform.app import batch_heap
from crm_platform.clock import to_millis
from crm_platform.custom_fields import FieldSet, RecordType, filter_of
from crm_platform.custom_fields_api import CustomFilter, fields_of
from crm_platform.errors import NotFound, RuleViolation
from crm_platform.field_rules import refuse_personal_search
from crm_platform.paging import BadCursor
from crm_platform.routes import CurrentActor, DbDep, require_roles
from fastapi import APIRouter, Header, Path, Query, Response, status
from pydantic import BeforeValidator, Field, StringConstraints
from pydantic_core import to_json

from leads import handlers
from leads import store as repo
from leads.api.capture_route import BehaviourRoute, CaptureRoute
from leads.api.deps import READERS, BehaviourGroupsDep, BulkTurnsDep, CaptureGroupsDep, UowDep, can_write
from leads.api.models import (
    BehaviourIn,
    BehaviourListOut,
    BehaviourOut,
    BehaviourRecordOut,
    BulkBehaviourOut,
    BulkBehavioursIn,
    BulkBehavioursOut,
    BulkCaptureIn,
    BulkCaptureMinimalOut,
    BulkCaptureOut,
    CaptureIn,
    CaptureOut,
    LeadEditIn,
    LeadOut,
    LeadPageOut,
)
from leads.domain.access import rep_scope, require_read
from leads.domain.leads import BehaviourInput, CaptureOutcome, Lead, LeadEdit, LeadStatus

JSON = "application/json"
router = APIRouter(prefix="/leads", tags=["leads"], dependencies=[require_roles(*READERS)])

LeadId = Annotated[str, Path(min_length=1, max_length=100)]
ChannelFilter = Annotated[str, StringConstraints(max_length=64)]
LeadFields = Annotated[FieldSet, fields_of(RecordType.LEAD)]


class LeadSort(StrEnum):
    NEWEST = "newest"
    OLDEST = "oldest"
    UPDATED = "updated"
    SCORE = "score"
    NAME = "name"


# A score bound of GET /leads (a blank one is no bound: checked after _blank_is_none).
Score = Annotated[float, Field(ge=0, le=1_000_000, allow_inf_nan=False)]


def _blank_is_none(value: Any) -> Any:
    """``?status=&channel=`` (empty) means no filter, as if the parameter were absent."""
    return None if isinstance(value, str) and not value.strip() else value


CampaignFilter = Annotated[
    str | None,
    BeforeValidator(_blank_is_none),
    Query(max_length=200, description="the campaign the lead was captured for (exact)"),
]
OwnerFilter = Annotated[
    str | None,
    BeforeValidator(_blank_is_none),
    Query(max_length=100, description="the sales rep the lead is assigned to (user id; a rep: their own)"),
]


async def capture_lead(
    body: CaptureIn, response: Response, groups: CaptureGroupsDep, fields: LeadFields
) -> CaptureOut:
    # Concurrent captures share transactions (leads.capture_groups); each keeps its own effects.
    result = await groups.capture(body.to_capture(fields), fields)
    if result.merged:
        response.status_code = status.HTTP_200_OK
    return CaptureOut(merged=result.merged, lead=LeadOut.of(result.lead))


# Served by CaptureRoute: the same declaration, without FastAPI's per-request dependency solving.
router.add_api_route(
    "",
    capture_lead,
    methods=["POST"],
    response_model=CaptureOut,
    status_code=status.HTTP_201_CREATED,
    dependencies=[can_write],
    summary="Capture a lead (201 new; 200 when the email matched a lead and it merged)",
    route_class_override=CaptureRoute,
)


# RFC 7240: ``Prefer: return=minimal`` asks for the outcome without the records' representation.
PreferHeader = Annotated[
    str | None,
    Header(
        max_length=200,
        description="`return=minimal`: each result is `{id, merged}` instead of `{merged, lead}` "
        "(answered with `Preference-Applied: return=minimal`); absent: the whole lead, as before",
    ),
]


def prefers_minimal(prefer: str | None) -> bool:
    """Whether a ``Prefer`` header asks for ``return=minimal`` (RFC 7240: comma-separated
    preferences, each ``token[=value]`` with parameters after ``;``, tokens case-insensitive)."""
    for preference in (prefer or "").split(","):
        name, _, value = preference.split(";")[0].partition("=")
        if name.strip().lower() == "return" and value.strip().strip('"').lower() == "minimal":
            return True
    return False


@router.post(
    "/bulk",
    response_model=BulkCaptureOut | BulkCaptureMinimalOut,
    dependencies=[can_write],
    summary="Capture many leads at once (each merged by email like POST /leads; all or none)",
)
async def capture_leads(
    body: BulkCaptureIn,
    uow: UowDep,
    fields: LeadFields,
    turns: BulkTurnsDep,
    prefer: PreferHeader = None,
) -> Response:
    # A few batches' transactions at once, the others waiting with only their parsed requests:
    # what a batch builds until it commits (leads, events, sealed copies, audit entries, outbox
    # rows) was leads' peak memory with four 500-lead requests at once. Built without the
    # young collections that walked all of it (batch_heap), freed before the threshold is back.
    async with turns:
        with batch_heap():
            captures = [lead.to_capture(fields) for lead in body.leads]
            results = await handlers.capture_leads(uow, captures, fields)
            answer = _bulk_answer(results, prefers_minimal(prefer))
            del results, captures
    return answer


def _bulk_answer(results: Sequence[CaptureOutcome], minimal: bool) -> Response:
    """The answer's JSON (``BulkCaptureMinimalOut`` or ``BulkCaptureOut``), returned as the
    response itself: a returned model was validated again by FastAPI against the route's
    ``response_model`` union (every one of 500 results rebuilt, a failed try as the other
    shape first) and only then dumped, about 5% of leads' CPU per bulk lead (docs/performance.md,
    "Twelfth session, capture"). The route's ``response_model`` still documents both shapes."""
    if minimal:
        # A loader that needs only the ids skips building and sending 500 full leads (~700 bytes each).
        minimal_answer = {"results": [{"id": r.lead.id, "merged": r.merged} for r in results]}
        applied = {"Preference-Applied": "return=minimal"}
        return Response(to_json(minimal_answer), media_type=JSON, headers=applied)
    whole = BulkCaptureOut(results=[CaptureOut(merged=r.merged, lead=LeadOut.of(r.lead)) for r in results])
    return Response(whole.model_dump_json(), media_type=JSON)


@router.get(
    "",
    response_model=LeadPageOut,
    summary="Leads: search, filter by status, channel, campaign, score range and owner, sort, cursor paging",
)
async def list_leads(
    db: DbDep,
    fields: LeadFields,
    actor: CurrentActor,
    status_: Annotated[LeadStatus | None, BeforeValidator(_blank_is_none), Query(alias="status")] = None,
    channel: Annotated[ChannelFilter | None, BeforeValidator(_blank_is_none), Query()] = None,
    q: Annotated[
        str | None,
        BeforeValidator(_blank_is_none),
        Query(
            max_length=200,
            description="words of the name, company or email (all must match), or a whole email",
        ),
    ] = None,
    sort: Annotated[
        LeadSort, Query(description="newest (default), oldest, updated, score, name")
    ] = LeadSort.NEWEST,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    cf: CustomFilter = None,
    campaign: CampaignFilter = None,
    min_score: Annotated[Score | None, BeforeValidator(_blank_is_none), Query(description="at least")] = None,
    max_score: Annotated[Score | None, BeforeValidator(_blank_is_none), Query(description="at most")] = None,
    owner: OwnerFilter = None,
) -> LeadPageOut:
    if min_score is not None and max_score is not None and min_score > max_score:
        raise RuleViolation("min_score must not be above max_score", field="query.min_score")
    # Analysts and executives see names and e-mails pseudonymised: no search or sort by them.
    refuse_personal_search(actor.roles, {"query.q": q, "query.sort": sort == LeadSort.NAME})
    custom = filter_of(fields, cf, roles=actor.roles)
    try:
        page = await repo.list_leads(
            db,
            status=status_.value if status_ else None,
            channel=channel.strip().lower() if channel else None,
            limit=limit,
            cursor=cursor,
            q=q,
            sort=sort.value,
            custom=custom,
            rep=rep_scope(actor) or (owner.strip() if owner else None),
            campaign=campaign.strip() if campaign else None,
            min_score=min_score,
            max_score=max_score,
        )
    except BadCursor as exc:
        raise RuleViolation(f"invalid input: query.cursor: {exc}", field="query.cursor") from None
    return LeadPageOut(items=[LeadOut.of(x) for x in page.items], next_cursor=page.next_cursor)


async def readable_lead(db: DbDep, lead_id: str, actor: CurrentActor) -> Lead:
    """The lead, if it exists (404) and ``actor`` may read it (403: a rep's lead is theirs)."""
    lead = await repo.get_lead(db, lead_id)
    if lead is None:
        raise NotFound(f"no lead '{lead_id}'", lead_id=lead_id)
    require_read(lead, actor)
    return lead


@router.get("/{lead_id}", response_model=LeadOut)
async def get_lead(lead_id: LeadId, db: DbDep, actor: CurrentActor) -> LeadOut:
    return LeadOut.of(await readable_lead(db, lead_id, actor))


async def record_behaviour(
    lead_id: LeadId, body: BehaviourIn, response: Response, groups: BehaviourGroupsDep, actor: CurrentActor
) -> BehaviourOut:
    # Concurrent single behaviours share transactions (leads.behaviour_groups); each keeps its own effects.
    result = await groups.record(
        BehaviourInput(
            lead_id=lead_id,
            behaviour=Behaviour(body.behaviour),
            occurred_at=to_millis(body.occurred_at) if body.occurred_at is not None else None,
            meta=body.meta,
            external_id=body.external_id,
            by=actor,
        )
    )
    if result.duplicate:
        response.status_code = status.HTTP_200_OK
    return BehaviourOut(
        behaviour_id=result.behaviour_id,
        duplicate=result.duplicate,
        counted_in_score=result.counted_in_score,
        qualified_now=result.qualified_now,
        lead=LeadOut.of(result.lead),
    )


# Served by BehaviourRoute (the handoff's qualifying request): the same declaration, without
# FastAPI's per-request dependency solving.
router.add_api_route(
    "/{lead_id}/behaviours",
    record_behaviour,
    methods=["POST"],
    response_model=BehaviourOut,
    status_code=status.HTTP_201_CREATED,
    dependencies=[can_write],
    summary="Record a behaviour and re-score (200 when external_id was already recorded)",
    route_class_override=BehaviourRoute,
)


@router.post(
    "/behaviours/bulk",
    response_model=BulkBehavioursOut,
    dependencies=[can_write],
    summary="Record many behaviours at once (a tracker's batch; in order, as one by one; all or none)",
    responses={404: {"description": "A lead the batch names does not exist: nothing recorded"}},
)
async def record_behaviours(body: BulkBehavioursIn, uow: UowDep, actor: CurrentActor) -> BulkBehavioursOut:
    inputs = [
        BehaviourInput(
            lead_id=b.lead_id,
            behaviour=Behaviour(b.behaviour),
            occurred_at=to_millis(b.occurred_at) if b.occurred_at is not None else None,
            meta=b.meta,
            external_id=b.external_id,
        )
        for b in body.behaviours
    ]
    items = await handlers.record_behaviours(uow, inputs, actor=actor)
    return BulkBehavioursOut(
        results=[
            BulkBehaviourOut(
                lead_id=item.lead.id,
                behaviour_id=item.behaviour_id,
                duplicate=item.duplicate,
                counted_in_score=item.counted_in_score,
                qualified_now=item.qualified_now,
                score=item.lead.score,
                status=item.lead.status.value,
            )
            for item in items
        ]
    )


@router.get(
    "/{lead_id}/behaviours",
    response_model=BehaviourListOut,
    summary="A lead's recorded behaviour, most recent first",
)
async def list_behaviours(
    lead_id: LeadId, db: DbDep, actor: CurrentActor, limit: Annotated[int, Query(ge=1, le=500)] = 100
) -> BehaviourListOut:
    await readable_lead(db, lead_id, actor)
    records = await repo.list_behaviours(db, lead_id, limit)
    return BehaviourListOut(items=[BehaviourRecordOut.of(r) for r in records])


@router.patch(
    "/{lead_id}",
    response_model=LeadOut,
    dependencies=[can_write],
    summary="Correct a lead's name, company, campaign, consent or custom fields (each change in its history)",
)
async def edit_lead(
    lead_id: LeadId, body: LeadEditIn, uow: UowDep, fields: LeadFields, actor: CurrentActor
) -> LeadOut:
    change = LeadEdit(
        name=body.name,
        company=body.company,
        campaign=body.campaign,
        marketing_email=body.consent.marketing_email if body.consent is not None else None,
        custom=body.custom,
    )
    return LeadOut.of(await handlers.edit_lead(uow, lead_id, change, fields, actor=actor))


@router.get(
    "/{lead_id}/history",
    response_model=audit_api.AuditPageOut,
    summary="A lead's changes, newest first: who, when, each field before and after",
)
async def lead_history(
    lead_id: LeadId,
    db: DbDep,
    actor: CurrentActor,
    limit: audit_api.Limit = 50,
    cursor: audit_api.Cursor = None,
) -> audit_api.AuditPageOut:
    await readable_lead(db, lead_id, actor)
    return await audit_api.history_out(db, repo.LEADS, lead_id, limit, cursor)
