"""/imports (leads from CSV or JSON lines files), /import-mappings, and /leads/export.

An import is created (format, mapping, defaults), then its file is PUT as the raw body,
streamed into storage; a worker imports it in the background (``leads.importer``) while
``GET /imports/{id}`` shows its progress and ``GET /imports/{id}/errors`` its rejected rows.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Annotated

from crm_platform.clock import now_millis
from crm_platform.csv_stream import Cell, csv_response
from crm_platform.errors import Conflict, NotFound, RuleViolation
from crm_platform.ids import new_id
from crm_platform.routes import CurrentActor, DbDep, require_roles
from fastapi import APIRouter, Path, Query, Request, status
from pydantic import BeforeValidator
from starlette.responses import StreamingResponse

from leads import handlers, importer
from leads import store as repo
from leads.api.deps import WRITERS, UowDep
from leads.api.models import ImportIn, ImportListOut, ImportOut, MappingIn, MappingListOut, MappingOut
from leads.domain.access import rep_scope
from leads.domain.imports import ImportDefaults, ImportFormat, ImportJob, InvalidMapping
from leads.domain.leads import LeadStatus

router = APIRouter(prefix="/imports", tags=["imports"], dependencies=[require_roles(*WRITERS)])
mappings_router = APIRouter(
    prefix="/import-mappings", tags=["imports"], dependencies=[require_roles(*WRITERS)]
)
export_router = APIRouter(prefix="/leads", tags=["leads"], dependencies=[require_roles(*WRITERS)])

ImportId = Annotated[str, Path(min_length=1, max_length=100)]
MappingName = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")]
UPLOAD_PATH = re.compile(r"^/imports/[^/]+/file$")
CONTENT_TYPES = {
    ImportFormat.CSV: ("text/csv", "application/csv", "text/plain"),
    ImportFormat.JSONL: ("application/x-ndjson", "application/jsonl", "application/json-lines", "text/plain"),
}


def is_upload(path: str) -> bool:
    return UPLOAD_PATH.match(path) is not None


@router.post("", response_model=ImportOut, status_code=status.HTTP_201_CREATED, summary="Create an import")
async def create_import(body: ImportIn, uow: UowDep, db: DbDep, actor: CurrentActor) -> ImportOut:
    mapping: dict[str, str] | None = dict(body.mapping) if body.mapping is not None else None
    if body.mapping_name is not None:
        mapping = await repo.get_mapping(db, body.mapping_name)
        if mapping is None:
            raise RuleViolation(f"no saved mapping '{body.mapping_name}'", field="body.mapping_name")
    d = body.defaults
    defaults = ImportDefaults(d.source_channel, d.marketing_email, d.campaign)
    try:
        job = await handlers.create_import(
            uow, body.format, mapping, defaults, actor=actor, mapping_name=body.mapping_name
        )
    except InvalidMapping as exc:
        raise RuleViolation(f"invalid mapping: {exc}", field="body.mapping") from None
    return ImportOut.of(job)


@router.put(
    "/{import_id}/file",
    response_model=ImportOut,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Upload the import's file as the raw body (streamed; up to CRM_MAX_UPLOAD_BYTES)",
    responses={415: {"description": "the Content-Type does not match the import's format"}},
)
async def upload_file(
    import_id: ImportId,
    request: Request,
    uow: UowDep,
    db: DbDep,
    name: Annotated[str | None, Query(max_length=200)] = None,
) -> ImportOut:
    job = await repo.get_import(db, import_id)
    if job is None:
        raise NotFound(f"no import '{import_id}'", import_id=import_id)
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in CONTENT_TYPES[job.format]:
        raise UnsupportedMedia(
            f"a {job.format.value} import takes Content-Type {' or '.join(CONTENT_TYPES[job.format])}, "
            f"not '{media or 'none'}'"
        )
    settings = request.app.state.settings
    upload_id, stale_after = new_id(), timedelta(seconds=settings.import_upload_stale_seconds)
    if not await repo.take_upload(db, import_id, upload_id, now_millis(), stale_after):
        raise Conflict(
            f"another upload of import '{import_id}' is storing its file: one upload at a time; wait for "
            f"it to end (GET /imports/{import_id}), or send the file again once it has stored nothing "
            f"for {settings.import_upload_stale_seconds:g} s",
            import_id=import_id,
        )
    try:
        job = await handlers.begin_upload(uow, import_id, name)
        size, header, start = await _store(db, job, request, upload_id, stale_after)
        job = await handlers.finish_upload(uow, import_id, size, header, start)
    finally:
        await repo.release_upload(db, import_id, upload_id)
    request.app.state.import_worker.notify()
    return ImportOut.of(job, now=now_millis())


async def _store(
    db: DbDep, job: ImportJob, request: Request, upload_id: str, stale_after: timedelta
) -> tuple[int, list[str], int]:
    """The body stored as the job's file; 422 for a file that cannot be imported, 409 when a
    later upload took over (this one had stored nothing for ``stale_after``)."""
    try:
        return await importer.store_upload(
            db,
            job,
            request.stream(),
            max_row_bytes=request.app.state.settings.import_max_row_bytes,
            still_mine=lambda: repo.renew_upload(db, job.id, upload_id, now_millis() + stale_after),
        )
    except importer.BadFile as exc:
        await repo.drop_chunks(db, job.id)
        raise RuleViolation(f"the file cannot be imported: {exc}", field="body") from None
    except importer.UploadTakenOver as exc:
        raise Conflict(str(exc), import_id=job.id) from None


@router.get("", response_model=ImportListOut, summary="Recent imports, newest first")
async def list_imports(db: DbDep, limit: Annotated[int, Query(ge=1, le=200)] = 50) -> ImportListOut:
    return ImportListOut(items=[ImportOut.of(j) for j in await repo.list_imports(db, limit)])


@router.get("/{import_id}", response_model=ImportOut, summary="An import's state and progress")
async def get_import(import_id: ImportId, db: DbDep) -> ImportOut:
    job = await repo.get_import(db, import_id)
    if job is None:
        raise NotFound(f"no import '{import_id}'", import_id=import_id)
    return ImportOut.of(job, now=now_millis())


@router.get(
    "/{import_id}/errors",
    response_class=StreamingResponse,
    summary="The error report: every rejected row (row, line, reason, raw record) as CSV",
    responses={200: {"content": {"text/csv": {}}, "description": "the rejected rows, in file order"}},
)
async def import_errors(import_id: ImportId, db: DbDep) -> StreamingResponse:
    if await repo.get_import(db, import_id) is None:
        raise NotFound(f"no import '{import_id}'", import_id=import_id)

    async def rows() -> AsyncIterator[Sequence[Cell]]:
        async for r in repo.rejections(db, import_id):
            yield (r.row, r.line, r.reason, r.raw)

    return csv_response(f"import-{import_id}-errors.csv", ("row", "line", "reason", "raw"), rows())


@mappings_router.put("/{name}", response_model=MappingOut, summary="Save a column mapping under a name")
async def save_mapping(name: MappingName, body: MappingIn, uow: UowDep, actor: CurrentActor) -> MappingOut:
    try:
        columns = await handlers.save_mapping(uow, name, body.columns, actor=actor)
    except InvalidMapping as exc:
        raise RuleViolation(f"invalid mapping: {exc}", field="body.columns") from None
    return MappingOut(name=name, columns=columns)


@mappings_router.get("", response_model=MappingListOut, summary="The saved column mappings")
async def list_mappings(db: DbDep) -> MappingListOut:
    docs = await repo.list_mappings(db)
    return MappingListOut(items=[MappingOut(name=d["_id"], columns=d["columns"]) for d in docs])


# -- export ------------------------------------------------------------------------------

EXPORT_COLUMNS = (
    "id",
    "email",
    "name",
    "company",
    "source_channel",
    "campaign",
    "marketing_email",
    "status",
    "score",
    "touch_count",
    "handoff_count",
    "verdict",
    "created_at",
    "updated_at",
)


def _blank_is_none(value: object) -> object:
    return None if isinstance(value, str) and not value.strip() else value


@export_router.get(
    "/export",
    response_class=StreamingResponse,
    summary="Every lead the list's filters select, as CSV (streamed; newest first)",
    responses={200: {"content": {"text/csv": {}}, "description": "one row per lead"}},
)
async def export_leads(
    db: DbDep,
    actor: CurrentActor,
    status_: Annotated[LeadStatus | None, BeforeValidator(_blank_is_none), Query(alias="status")] = None,
    channel: Annotated[str | None, BeforeValidator(_blank_is_none), Query(max_length=64)] = None,
) -> StreamingResponse:
    leads = repo.export_leads(
        db,
        status=status_.value if status_ else None,
        channel=channel.strip().lower() if channel else None,
        rep=rep_scope(actor),  # a rep's export: the leads assigned to them (when granted the export)
    )

    async def rows() -> AsyncIterator[Sequence[Cell]]:
        async for x in leads:
            yield (
                x.id,
                x.email,
                x.name,
                x.company,
                x.origin_channel,
                x.campaign,
                x.consent.marketing_email,
                x.status.value,
                x.score,
                x.touch_count,
                x.handoff_count,
                x.verdict,
                x.created_at,
                x.updated_at,
            )

    return csv_response("leads.csv", EXPORT_COLUMNS, rows())


class UnsupportedMedia(RuleViolation):
    status_code = 415
    code = "unsupported_media_type"
