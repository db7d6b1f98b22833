"""``GET /audit`` and ``GET /audit/export`` for every service, and the record history response.

Each service mounts :func:`router` among its protected routers (``bootstrap.build_app``):
admins and auditors (read-only) query the service's audit log per user, record and period
(newest first, cursor pagination) and export it as CSV, streamed. A service's
``GET /<records>/{id}/history`` answers :func:`history_out` (the record's audit entries).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from crm_platform import audit
from crm_platform.auth import Role, require_roles
from crm_platform.csv_stream import csv_response
from crm_platform.errors import RuleViolation
from crm_platform.paging import BadCursor
from crm_platform.routes import DbDep
from crm_platform.values import Timestamp

AUDIT_READERS = (Role.ADMIN, Role.AUDITOR)


class FieldChangeOut(BaseModel):
    field: str
    before: Any = None
    after: Any = None


class AuditActorOut(BaseModel):
    type: str = Field(description="user | event (a handoff or other event) | system | public")
    user_id: str
    username: str | None = None
    roles: list[str] = []
    source: str | None = None
    event_type: str | None = None
    event_id: str | None = None


class AuditRecordOut(BaseModel):
    type: str = Field(description="the collection the record lives in (leads, opportunities, users, ...)")
    id: str


class AuditBatchOut(BaseModel):
    id: str = Field(description="the stored batch entry")
    size: int = Field(description="how many records it names")


class AuditEntryOut(BaseModel):
    id: str
    at: datetime
    service: str
    actor: AuditActorOut
    action: str = Field(description="insert | update | delete")
    operation: str | None = Field(
        None, description="the route (METHOD /path) or the event that made the change"
    )
    record: AuditRecordOut
    changes: list[FieldChangeOut]
    request_id: str | None = None
    correlation_id: str | None = None
    batch: AuditBatchOut | None = Field(
        None,
        description="set when the change was stored in one entry per batch (an import batch, a bulk "
        "capture): the stored entry that names this record among its batch's (crm_platform.audit)",
    )

    @classmethod
    def of(cls, doc: dict[str, Any]) -> AuditEntryOut:
        return cls(
            id=doc["_id"],
            at=doc["at"],
            service=doc["service"],
            actor=AuditActorOut(**doc["actor"]),
            action=doc["action"],
            operation=doc.get("operation"),
            record=AuditRecordOut(**doc["record"]),
            changes=[FieldChangeOut(**audit.plain(c)) for c in doc.get("changes", [])],
            request_id=doc.get("request_id"),
            correlation_id=doc.get("correlation_id"),
            batch=AuditBatchOut(**doc["batch"]) if doc.get("batch") else None,
        )


class AuditPageOut(BaseModel):
    items: list[AuditEntryOut]
    next_cursor: str | None = Field(None, description="pass as ?cursor= for the next page; null on the last")


Cursor = Annotated[str | None, Query(max_length=500)]
Limit = Annotated[int, Query(ge=1, le=500)]


def page_out(page: audit.Page) -> AuditPageOut:
    return AuditPageOut(items=[AuditEntryOut.of(d) for d in page.items], next_cursor=page.next_cursor)


async def history_out(
    db: DbDep, record_type: str, record_id: str, limit: int, cursor: str | None
) -> AuditPageOut:
    """A record's field history (who, when, before, after), newest first."""
    try:
        return page_out(await audit.history(db, record_type, record_id, limit=limit, cursor=cursor))
    except BadCursor as exc:
        raise RuleViolation(f"invalid input: query.cursor: {exc}", field="query.cursor") from None


UserFilter = Annotated[str | None, Query(max_length=200, description="the acting user's id (a token's sub)")]
TypeFilter = Annotated[str | None, Query(max_length=100, description="the record type (collection)")]
IdFilter = Annotated[str | None, Query(max_length=200, description="one record's id (with record_type)")]
Since = Annotated[Timestamp | None, Query(description="from this time (inclusive)")]
Until = Annotated[Timestamp | None, Query(description="until this time (exclusive)")]


async def audit_filters(
    user_id: UserFilter = None,
    record_type: TypeFilter = None,
    record_id: IdFilter = None,
    since: Since = None,
    until: Until = None,
) -> audit.Filters:
    """The query's filters (one dependency for the listing and the export)."""
    if record_id is not None and record_type is None:
        raise RuleViolation("invalid input: query.record_id needs query.record_type", field="query.record_id")
    return audit.Filters(user_id, record_type, record_id, since, until)


FiltersDep = Annotated[audit.Filters, Depends(audit_filters)]


def router(*dependencies: Any) -> APIRouter:
    """The audit routes; mount among the service's protected routers (``dependencies`` run first)."""
    checks = [*dependencies, require_roles(*AUDIT_READERS)]
    api = APIRouter(prefix="/audit", tags=["audit"], dependencies=checks)

    @api.get("", response_model=AuditPageOut, summary="This service's audit log, newest first")
    async def list_audit(
        db: DbDep, filters: FiltersDep, limit: Limit = 50, cursor: Cursor = None
    ) -> AuditPageOut:
        try:
            return page_out(await audit.query(db, filters, limit=limit, cursor=cursor))
        except BadCursor as exc:
            raise RuleViolation(f"invalid input: query.cursor: {exc}", field="query.cursor") from None

    @api.get(
        "/export",
        summary="The audit log as CSV (same filters), streamed",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/csv": {}}}},
    )
    async def export_audit(db: DbDep, filters: FiltersDep) -> StreamingResponse:
        return csv_response("audit.csv", audit.CSV_COLUMNS, audit.csv_rows(db, filters))

    return api
