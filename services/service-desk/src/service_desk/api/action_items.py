"""/action-items: raise an action item for the department that owns the fix, and follow it."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any

from crm_contracts.events.action_items import OwningDepartment, SourceKind
from crm_platform.routes import CurrentActor, DbDep
from crm_platform.values import Timestamp
from fastapi import APIRouter, Query, status
from pydantic import BaseModel, ConfigDict, Field

from service_desk import store
from service_desk.api.deps import SERVICE_DESK_ROLES, UowDep
from service_desk.domain.access import sees_all
from service_desk.domain.raised_items import Raise, RaisedItem, RaisedSource
from service_desk.handlers import action_items as handlers

router = APIRouter(tags=["action items"], dependencies=[SERVICE_DESK_ROLES])


class SourceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: SourceKind
    record_id: str = Field(min_length=1, max_length=200, description="The ticket, survey, check-in or note")
    excerpt: str | None = Field(default=None, max_length=2000, description="What the customer said")


class RaiseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    department: OwningDepartment = Field(description="Who owns the fix: marketing, sales or customer-success")
    title: str = Field(min_length=1, max_length=500, pattern=r"\S", description="What is to be done")
    details: str | None = Field(default=None, max_length=5000)
    owner: str | None = Field(
        default=None, min_length=1, max_length=100, description="A user of that department; none: its queue"
    )
    due_at: Timestamp
    account_id: str = Field(min_length=1, max_length=100)
    source: SourceIn

    def ask(self) -> Raise:
        source = RaisedSource(str(self.source.kind), self.source.record_id, self.source.excerpt)
        return Raise(str(self.department), self.title, self.details, self.owner, self.due_at, source)


class RaisedOut(BaseModel):
    item_id: str
    department: str
    title: str
    details: str | None = None
    owner: str | None = None
    status: str
    assignee: str | None = None
    due_at: datetime
    account_id: str
    account_name: str
    source: dict[str, Any]
    raised_by: str
    raised_at: datetime
    closed_at: datetime | None = None
    reason: str | None = None
    escalated_at: datetime | None = None
    escalated_to: str | None = None
    history: list[dict[str, Any]] = Field(default_factory=list)

    @classmethod
    def of(cls, item: RaisedItem) -> RaisedOut:
        fields = {k: v for k, v in asdict(item).items() if k in cls.model_fields}
        return cls.model_validate(fields)


class RaisedList(BaseModel):
    items: list[RaisedOut]
    count: int


@router.post(
    "/action-items",
    response_model=RaisedOut,
    status_code=status.HTTP_201_CREATED,
    summary="Raise an action item for the department that owns the fix",
)
async def raise_item(body: RaiseIn, uow: UowDep, actor: CurrentActor) -> RaisedOut:
    return RaisedOut.of(await handlers.raise_item(uow, body.account_id, body.ask(), actor))


@router.get("/action-items", response_model=RaisedList, summary="Action items raised, with their outcome")
async def list_raised(
    db: DbDep,
    uow: UowDep,
    actor: CurrentActor,
    account_id: Annotated[str | None, Query(max_length=100)] = None,
    department: OwningDepartment | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> RaisedList:
    return await _raised(db, uow, actor, account_id, str(department) if department else None, limit)


@router.get(
    "/accounts/{account_id}/action-items",
    response_model=RaisedList,
    summary="The customer's action items and what each department did with them",
)
async def account_items(account_id: str, db: DbDep, uow: UowDep, actor: CurrentActor) -> RaisedList:
    return await _raised(db, uow, actor, account_id, None, 500)


async def _raised(
    db: DbDep, uow: UowDep, actor: CurrentActor, account_id: str | None, department: str | None, limit: int
) -> RaisedList:
    """An account's items (one the actor sees), else everything (reps, admins) or what a CSM raised."""
    if account_id is not None:
        await handlers.check_account(uow, account_id, actor)
    raised_by = None if account_id is not None or sees_all(actor.roles) else actor.user_id
    items = await store.list_raised(
        db, account_id=account_id, department=department, raised_by=raised_by, limit=limit
    )
    return RaisedList(items=[RaisedOut.of(i) for i in items], count=len(items))
