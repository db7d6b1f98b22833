"""``/erasure-requests``: forget a person in every department (issue 9).

Administrators file a request (``POST``); administrators and auditors read the requests with
each department's confirmation and the time it took (``GET``). The gateway keeps and publishes
only the keyed hash of the e-mail: the e-mail given is never stored nor returned.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from crm_contracts.email import EmailStr
from crm_platform.auth import Role, require_roles
from crm_platform.errors import NotFound
from crm_platform.routes import CurrentActor, DbDep
from fastapi import APIRouter, Depends, Query, status
from pydantic import BaseModel, ConfigDict, Field

from gateway import handlers, store
from gateway.api.deps import HandlerDeps, active_principal
from gateway.domain.erasure import ErasureRequest

router = APIRouter(
    prefix="/erasure-requests",
    tags=["erasure"],
    dependencies=[Depends(active_principal), require_roles(Role.ADMIN, Role.AUDITOR)],
    responses={401: {"description": "no valid token"}, 403: {"description": "not an admin or auditor"}},
)

RecordId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$")]


class FileErasure(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: EmailStr | None = Field(
        default=None, description="the person's e-mail (only its keyed hash is kept)"
    )
    record_ids: list[RecordId] = Field(
        default_factory=list, max_length=20, description="records to erase too (a lead, contact, ... id)"
    )


class ConfirmationOut(BaseModel):
    department: str
    state: str = Field(
        description="pending (nothing heard yet) | erased (first pass done, its recheck due at "
        "recheck_due_at: a record a late writer stored may still hold the person until then) | "
        "confirmed (the recheck ran, or the department keeps no personal data)"
    )
    records_erased: int | None = Field(
        default=None,
        description="erased: by the first pass; confirmed: by both passes (late_records included)",
    )
    audit_entries_rewritten: int | None = None
    erased_at: datetime | None = Field(default=None, description="the first pass's commit")
    recheck_due_at: datetime | None = Field(
        default=None, description="when the department matches the request once more"
    )
    late_records: int | None = Field(
        default=None, description="confirmed: the records the recheck erased (a late writer's)"
    )
    duration_ms: int | None = Field(
        default=None, description="from the request to the department's confirmation (its recheck's commit)"
    )
    completed_at: datetime | None = Field(default=None, description="the confirmation's commit")

    @classmethod
    def of(cls, r: ErasureRequest, name: str) -> ConfirmationOut:
        state = r.department_state(name)
        first, confirmed = r.first_pass(name), r.confirmation(name)
        out = cls(department=name, state=state.value)
        if first is not None:
            out.records_erased = first.records_erased
            out.audit_entries_rewritten = first.audit_entries_rewritten
            out.erased_at = first.erased_at
            out.recheck_due_at = first.recheck_due_at
        if confirmed is not None:
            out.records_erased = confirmed.records_erased
            out.audit_entries_rewritten = confirmed.audit_entries_rewritten
            out.duration_ms = confirmed.duration_ms
            out.completed_at = confirmed.completed_at
            out.late_records = r.late_records(name)
        return out


class ErasureOut(BaseModel):
    id: str
    state: str = Field(
        description="pending until every department confirmed (after its recheck), then completed"
    )
    email_hash: str | None = Field(description="the keyed hash the departments matched (never the e-mail)")
    record_ids: list[str]
    requested_by: str
    requested_at: datetime
    completed_at: datetime | None
    duration_ms: int | None = Field(description="from the request to the last confirmation")
    rechecks_due_by: datetime | None = Field(
        description="pending: when the last recheck still awaited is due (null: none has said yet)"
    )
    departments: list[ConfirmationOut]

    @classmethod
    def of(cls, r: ErasureRequest) -> ErasureOut:
        took = (
            None if r.completed_at is None else int((r.completed_at - r.requested_at).total_seconds() * 1000)
        )
        return cls(
            id=r.id,
            state=r.state.value,
            email_hash=r.email_hash,
            record_ids=list(r.record_ids),
            requested_by=r.requested_by,
            requested_at=r.requested_at,
            completed_at=r.completed_at,
            duration_ms=took,
            rechecks_due_by=r.rechecks_due_by,
            departments=[ConfirmationOut.of(r, name) for name in r.departments],
        )


class ErasureList(BaseModel):
    items: list[ErasureOut]
    next: str | None = Field(description="pass as ?before= for the next (older) page")


@router.post(
    "",
    response_model=ErasureOut,
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[require_roles(Role.ADMIN)],
    responses={422: {"description": "no email and no record_ids, or a malformed one (named)"}},
)
async def file_erasure_request(body: FileErasure, actor: CurrentActor, deps: HandlerDeps) -> ErasureOut:
    """Every department erases the person in its own database and confirms; follow it with GET."""
    request = await handlers.file_erasure_request(deps, body.email, body.record_ids, actor)
    return ErasureOut.of(request)


@router.get("", response_model=ErasureList)
async def list_erasure_requests(
    db: DbDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    before: Annotated[
        str | None, Query(max_length=100, description="the last id of the previous page")
    ] = None,
) -> ErasureList:
    requests = await store.list_erasure_requests(db, limit, before)
    return ErasureList(
        items=[ErasureOut.of(r) for r in requests],
        next=requests[-1].id if len(requests) == limit else None,
    )


@router.get("/{request_id}", response_model=ErasureOut, responses={404: {"description": "no such request"}})
async def get_erasure_request(request_id: str, db: DbDep) -> ErasureOut:
    request = await store.get_erasure_request(db, request_id)
    if request is None:
        raise NotFound(f"no erasure request {request_id}", request_id=request_id)
    return ErasureOut.of(request)
