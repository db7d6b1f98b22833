"""The import routes every importing department mounts: create an import, upload its file
(streamed), follow its progress, read its error report, save column mappings.

:func:`routers` builds them for one department from an :class:`ImportSpec` (its job type and
codec, its writers, its defaults model, where the routes live: marketing's ``/imports`` and
``/import-mappings``, sales' ``/contacts/imports`` and ``/contacts/import-mappings``). An
import is created (format, mapping, defaults), then its file is PUT as the raw body, streamed
into storage; the department's worker (``crm_platform.imports.worker``) imports it in the
background while ``GET .../{id}`` shows its progress and ``GET .../{id}/errors`` its rejected
rows. The routes read ``app.state.uow`` (the department's unit of work, whose unit has
``imports``), ``app.state.import_worker`` and ``app.state.import_settings``
(:class:`crm_platform.imports.settings.ImportSettings`).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Generic, Literal, TypeVar

from fastapi import APIRouter, Path, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, create_model, model_validator
from starlette.responses import StreamingResponse

from crm_platform.actor import Actor
from crm_platform.auth import require_roles
from crm_platform.clock import now_millis
from crm_platform.csv_stream import Cell, csv_response
from crm_platform.custom_fields import CUSTOM_PREFIX, RecordType
from crm_platform.errors import Conflict, NotFound, RuleViolation
from crm_platform.ids import new_id
from crm_platform.imports import handlers, store
from crm_platform.imports.domain import CUSTOM_TARGET, ImportFormat, ImportJob, ImportState, InvalidMapping
from crm_platform.imports.store import JobCodec
from crm_platform.imports.worker import BadFile, UploadTakenOver, store_upload
from crm_platform.routes import CurrentActor, DbDep

J = TypeVar("J", bound=ImportJob[Any])

ImportId = Annotated[str, Path(min_length=1, max_length=100)]
MappingName = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")]
ColumnName = Annotated[str, StringConstraints(min_length=1, max_length=200)]
CONTENT_TYPES = {
    ImportFormat.CSV: ("text/csv", "application/csv", "text/plain"),
    ImportFormat.JSONL: ("application/x-ndjson", "application/jsonl", "application/json-lines", "text/plain"),
}


class UnsupportedMedia(RuleViolation):
    status_code = 415
    code = "unsupported_media_type"


@dataclass(frozen=True)
class ImportSpec(Generic[J]):
    """One department's imports: what a row becomes is its worker's; this is the routes' part."""

    codec: JobCodec[J]
    writers: tuple[str, ...]
    defaults_model: type[BaseModel]  # the request's ``defaults`` (values for fields a row lacks)
    to_defaults: Callable[[Any], Any]  # that model -> the job's defaults
    # When the defaults depend on who asks or on stored data (sales: the contacts' owner, a
    # rep's own book), this gives them instead, in the department's unit of work.
    resolve_defaults: Callable[[Any, Actor, Any], Awaitable[Any]] | None = None
    prefix: str = "/imports"
    mappings_prefix: str = "/import-mappings"
    tag: str = "imports"

    @property
    def record(self) -> str:
        return self.codec.job_type.RECORD

    def upload_path(self) -> re.Pattern[str]:
        """The upload route's path (``create_app(upload_paths=...)``: its body is streamed)."""
        return re.compile(f"^{re.escape(self.prefix)}/[^/]+/file$")


# -- bodies ---------------------------------------------------------------------------------


class ProgressOut(BaseModel):
    read: int = Field(description="rows read so far")
    accepted: int = Field(description="rows stored: a new record, or merged into one")
    merged: int = Field(description="of the accepted, rows merged into an existing record (same key)")
    rejected: int = Field(description="rows refused; see GET .../{id}/errors")
    bytes_done: int
    bytes_total: int
    percent: float
    rows_per_second: float | None


class ImportOut(BaseModel):
    id: str
    format: ImportFormat
    state: ImportState
    mapping: dict[str, str] | None
    mapping_name: str | None
    file_name: str | None
    header: list[str]
    progress: ProgressOut
    error: str | None
    attempts: int = Field(
        description="Tries since the last batch committed (CRM_IMPORT_MAX_ATTEMPTS at most)"
    )
    last_error: str | None = Field(description="Why the last try failed (it is retried until the limit)")
    created_by: str
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job: ImportJob[Any], now: datetime | None = None) -> ImportOut:
        c, total = job.counts, job.size
        done = total if job.state is ImportState.COMPLETED else min(job.checkpoint.offset, total)
        end = job.finished_at or now
        seconds = (end - job.started_at).total_seconds() if job.started_at and end else 0
        return cls(
            id=job.id,
            format=job.format,
            state=job.state,
            mapping=dict(job.mapping) if job.mapping is not None else None,
            mapping_name=job.mapping_name,
            file_name=job.file_name,
            header=list(job.header),
            progress=ProgressOut(
                read=c.read,
                accepted=c.accepted,
                merged=c.merged,
                rejected=c.rejected,
                bytes_done=done,
                bytes_total=total,
                percent=round(100 * done / total, 1) if total else 0.0,
                rows_per_second=round(c.read / seconds, 1) if seconds > 0 else None,
            ),
            error=job.error,
            attempts=job.attempts,
            last_error=job.last_error,
            created_by=job.created_by_name,
            created_at=job.created_at,
            updated_at=job.updated_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
        )


class ImportListOut(BaseModel):
    items: list[ImportOut]


class MappingOut(BaseModel):
    name: str
    columns: dict[str, str]


class MappingListOut(BaseModel):
    items: list[MappingOut]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class _ImportInBase(_In):
    format: ImportFormat = Field(
        description="csv (a header line names the columns) or jsonl (one object a line)"
    )
    mapping_name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")] | None = Field(
        default=None, description="a mapping saved with PUT .../import-mappings/{name}"
    )

    @model_validator(mode="after")
    def _one_mapping(self) -> _ImportInBase:
        if getattr(self, "mapping", None) is not None and self.mapping_name is not None:
            raise ValueError("give mapping or mapping_name, not both")
        return self


def bodies(spec: ImportSpec[Any]) -> tuple[type[BaseModel], type[BaseModel]]:
    """The department's ``ImportIn`` and ``MappingIn``: a column maps to one of its fields."""
    field_type: Any = Literal[spec.codec.job_type.FIELDS]  # the OpenAPI enum of the fields
    if spec.codec.job_type.CUSTOM_FIELDS:  # or custom.<key>: one of the record's custom fields
        field_type = field_type | Annotated[str, StringConstraints(pattern=CUSTOM_TARGET.pattern)]
    record = spec.record
    import_in = create_model(
        "ImportIn",
        __base__=_ImportInBase,
        mapping=(
            dict[ColumnName, field_type] | None,
            Field(
                default=None,
                max_length=200,
                description=f"file column -> {record} field; omitted: columns named like the fields "
                "(CSV), or the fields' own names (JSON lines)",
            ),
        ),
        defaults=(spec.defaults_model, Field(default_factory=spec.defaults_model)),
    )
    mapping_in = create_model(
        "MappingIn",
        __base__=_In,
        columns=(
            dict[ColumnName, field_type],
            Field(max_length=200, description=f"file column -> {record} field"),
        ),
    )
    return import_in, mapping_in


# -- routes ----------------------------------------------------------------------------------


def routers(spec: ImportSpec[J]) -> tuple[APIRouter, APIRouter]:
    """The department's import routes and its saved-mapping routes (its writers only)."""
    import_in, mapping_in = bodies(spec)
    imports = APIRouter(prefix=spec.prefix, tags=[spec.tag], dependencies=[require_roles(*spec.writers)])
    mappings = APIRouter(
        prefix=spec.mappings_prefix, tags=[spec.tag], dependencies=[require_roles(*spec.writers)]
    )
    imports.add_api_route(
        "",
        _create_route(spec, import_in),
        methods=["POST"],
        response_model=ImportOut,
        status_code=status.HTTP_201_CREATED,
        summary=f"Create an import of {spec.record}s",
    )
    imports.add_api_route(
        "/{import_id}/file",
        _upload_route(spec),
        methods=["PUT"],
        response_model=ImportOut,
        status_code=status.HTTP_202_ACCEPTED,
        summary="Upload the import's file as the raw body (streamed; up to CRM_MAX_UPLOAD_BYTES)",
        responses={415: {"description": "the Content-Type does not match the import's format"}},
    )
    _read_routes(imports, spec)
    _mapping_routes(mappings, spec, mapping_in)
    return imports, mappings


async def _custom_targets_defined(
    spec: ImportSpec[Any], request: Request, mapping: Mapping[str, str] | None, field: str
) -> None:
    """A mapping's ``custom.<key>`` targets must be custom fields the record type has now (the
    department's definitions, ``app.state.custom_fields``): a 422 naming ``field`` otherwise,
    before any row is read, rather than every row rejected for it."""
    keys = [t.removeprefix(CUSTOM_PREFIX) for t in (mapping or {}).values() if t.startswith(CUSTOM_PREFIX)]
    registry = getattr(request.app.state, "custom_fields", None)
    if not keys or registry is None or not spec.codec.job_type.CUSTOM_FIELDS:
        return
    fields = await registry.current(RecordType(spec.record))
    unknown = [k for k in keys if fields.field(k) is None]
    if unknown:
        known = ", ".join(f.key for f in fields.fields) or "none defined"
        raise RuleViolation(
            f"invalid mapping: {', '.join(CUSTOM_PREFIX + k for k in unknown)} is not a custom field of "
            f"{spec.record} (known: {known})",
            field=field,
        )


def _create_route(spec: ImportSpec[Any], import_in: type[BaseModel]) -> Callable[..., Any]:
    async def create_import(body: BaseModel, request: Request, db: DbDep, actor: CurrentActor) -> ImportOut:
        values: Any = body
        mapping: dict[str, str] | None = dict(values.mapping) if values.mapping is not None else None
        if values.mapping_name is not None:
            mapping = await store.get_mapping(db, values.mapping_name)
            if mapping is None:
                raise RuleViolation(f"no saved mapping '{values.mapping_name}'", field="body.mapping_name")
        await _custom_targets_defined(
            spec, request, mapping, "body.mapping_name" if values.mapping_name else "body.mapping"
        )
        uow = request.app.state.uow
        if spec.resolve_defaults is not None:
            defaults = await spec.resolve_defaults(uow, actor, values.defaults)
        else:
            defaults = spec.to_defaults(values.defaults)
        try:
            job = await handlers.create_import(
                uow, spec.codec.job_type, values.format, mapping, defaults,
                actor=actor, mapping_name=values.mapping_name,
            )  # fmt: skip
        except InvalidMapping as exc:
            raise RuleViolation(f"invalid mapping: {exc}", field="body.mapping") from None
        return ImportOut.of(job)

    # The body's model is built per department, so it is set here (FastAPI reads the signature).
    create_import.__annotations__["body"] = import_in
    return create_import


def _mapping_routes(r: APIRouter, spec: ImportSpec[Any], mapping_in: type[BaseModel]) -> None:
    async def save_mapping(
        name: MappingName, body: BaseModel, request: Request, actor: CurrentActor
    ) -> MappingOut:
        values: Any = body
        await _custom_targets_defined(spec, request, values.columns, "body.columns")
        try:
            columns = await handlers.save_mapping(
                request.app.state.uow, spec.codec.job_type, name, values.columns, actor=actor
            )
        except InvalidMapping as exc:
            raise RuleViolation(f"invalid mapping: {exc}", field="body.columns") from None
        return MappingOut(name=name, columns=columns)

    save_mapping.__annotations__["body"] = mapping_in

    async def list_mappings(db: DbDep) -> MappingListOut:
        docs = await store.list_mappings(db)
        return MappingListOut(items=[MappingOut(name=d["_id"], columns=d["columns"]) for d in docs])

    r.add_api_route(
        "/{name}",
        save_mapping,
        methods=["PUT"],
        response_model=MappingOut,
        summary="Save a column mapping under a name",
    )
    r.add_api_route(
        "", list_mappings, methods=["GET"], response_model=MappingListOut, summary="The saved column mappings"
    )


def _read_routes(r: APIRouter, spec: ImportSpec[Any]) -> None:
    codec = spec.codec

    @r.get("", response_model=ImportListOut, summary="Recent imports, newest first")
    async def list_imports(db: DbDep, limit: Annotated[int, Query(ge=1, le=200)] = 50) -> ImportListOut:
        return ImportListOut(items=[ImportOut.of(j) for j in await store.list_imports(db, codec, limit)])

    @r.get("/{import_id}", response_model=ImportOut, summary="An import's state and progress")
    async def get_import(import_id: ImportId, db: DbDep) -> ImportOut:
        job = await store.get_import(db, codec, import_id)
        if job is None:
            raise NotFound(f"no import '{import_id}'", import_id=import_id)
        return ImportOut.of(job, now=now_millis())

    @r.get(
        "/{import_id}/errors",
        response_class=StreamingResponse,
        summary="The error report: every rejected row (row, line, reason, raw record) as CSV",
        responses={200: {"content": {"text/csv": {}}, "description": "the rejected rows, in file order"}},
    )
    async def import_errors(import_id: ImportId, db: DbDep) -> StreamingResponse:
        if await store.get_import(db, codec, import_id) is None:
            raise NotFound(f"no import '{import_id}'", import_id=import_id)

        async def rows() -> AsyncIterator[Sequence[Cell]]:
            async for x in store.rejections(db, import_id):
                yield (x.row, x.line, x.reason, x.raw)

        return csv_response(f"import-{import_id}-errors.csv", ("row", "line", "reason", "raw"), rows())


def _upload_route(spec: ImportSpec[Any]) -> Callable[..., Any]:
    codec, prefix = spec.codec, spec.prefix

    async def upload_file(
        import_id: ImportId,
        request: Request,
        db: DbDep,
        name: Annotated[str | None, Query(max_length=200)] = None,
    ) -> ImportOut:
        job = await store.get_import(db, codec, import_id)
        if job is None:
            raise NotFound(f"no import '{import_id}'", import_id=import_id)
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media not in CONTENT_TYPES[job.format]:
            raise UnsupportedMedia(
                f"a {job.format.value} import takes Content-Type {' or '.join(CONTENT_TYPES[job.format])}, "
                f"not '{media or 'none'}'"
            )
        settings, uow = request.app.state.import_settings, request.app.state.uow
        upload_id, stale_after = new_id(), timedelta(seconds=settings.import_upload_stale_seconds)
        if not await store.take_upload(db, import_id, upload_id, now_millis(), stale_after):
            raise Conflict(
                f"another upload of import '{import_id}' is storing its file: one upload at a time; wait "
                f"for it to end (GET {prefix}/{import_id}), or send the file again once it has stored "
                f"nothing for {settings.import_upload_stale_seconds:g} s",
                import_id=import_id,
            )
        try:
            job = await handlers.begin_upload(uow, import_id, name)
            size, header, start = await _store(db, job, request, upload_id, stale_after)
            job = await handlers.finish_upload(uow, import_id, size, header, start)
        finally:
            await store.release_upload(db, import_id, upload_id)
        request.app.state.import_worker.notify()
        return ImportOut.of(job, now=now_millis())

    return upload_file


async def _store(
    db: DbDep, job: ImportJob[Any], request: Request, upload_id: str, stale_after: timedelta
) -> tuple[int, list[str], int]:
    """The body stored as the job's file; 422 for a file that cannot be imported, 409 when a
    later upload took over (this one had stored nothing for ``stale_after``)."""
    try:
        return await store_upload(
            db,
            job,
            request.stream(),
            max_row_bytes=request.app.state.import_settings.import_max_row_bytes,
            still_mine=lambda: store.renew_upload(db, job.id, upload_id, now_millis() + stale_after),
        )
    except BadFile as exc:
        await store.drop_chunks(db, job.id)
        raise RuleViolation(f"the file cannot be imported: {exc}", field="body") from None
    except UploadTakenOver as exc:
        raise Conflict(str(exc), import_id=job.id) from None
