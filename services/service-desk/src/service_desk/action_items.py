"""Voice of the customer becomes work: customer success raises action items and follows them.

From a ticket, a survey comment, a check-in or an account note, anyone in customer
service/success raises an action item for the department that owns the fix
(``POST /action-items``): marketing and sales receive it as a handoff
(``action_item.raised_for_<department>``) into their own queue; customer success' own
items go straight into its own queue here (the shared ``crm_platform.action_items``,
under ``/action-queue``). Every step the owning department takes comes back
(``action_item.updated_by_<department>``) and is kept on the raised item, so the
customer's record shows it (``GET /accounts/{account_id}/action-items``).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from crm_contracts import Envelope
from crm_contracts.events.action_items import (
    CUSTOMER_SUCCESS,
    RAISED_BY_DEPARTMENT,
    UPDATED_BY_DEPARTMENT,
    ActionItemStatus,
    OwningDepartment,
    SourceKind,
)
from crm_platform.action_items.api import action_queue_router
from crm_platform.action_items.domain import ActionItem
from crm_platform.action_items.handlers import ActionItemQueue, outcome_event, receive_in
from crm_platform.action_items.wiring import install
from crm_platform.auth import SERVICE_ROLES, CurrentUser, Principal, Role, require_roles
from crm_platform.clock import Clock, to_millis
from crm_platform.consumer import DeadLetter, Handler
from crm_platform.errors import NotFound, RuleViolation
from crm_platform.mongo import Store, Tx
from crm_platform.runtime import ServiceRuntime
from crm_platform.values import Timestamp
from fastapi import APIRouter, Depends, FastAPI, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field
from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from service_desk.domain.access import can_see_account
from service_desk.store import ACCOUNTS, TICKETS

Doc = dict[str, Any]
RAISED = "raised_action_items"  # the items customer success raised, with their outcomes
MEMBERS = tuple(sorted(SERVICE_ROLES))
MANAGERS = (Role.SERVICE_LEAD, Role.ADMIN)
members_only = require_roles(*MEMBERS)


# --- the raised items' record (this service's own collection) ----------------------------------
async def ensure_indexes(db: AsyncDatabase[Doc]) -> None:
    await db[RAISED].create_index([("account_id", ASCENDING), ("raised_at", DESCENDING)], name="by_account")
    await db[RAISED].create_index([("department", ASCENDING), ("status", ASCENDING)], name="by_department")
    if RAISED not in set(await db.list_collection_names()):
        await db.create_collection(RAISED)


async def record_step(
    db: AsyncDatabase[Doc], session: AsyncClientSession | None, item_id: str, step: Doc
) -> bool:
    """Keep one step the owning department took on the raised item; False if unknown.

    Steps may arrive out of order (a re-sent handoff arrives after later ones): the
    history stays sorted by time and the status follows the latest step only.
    """
    raised = db[RAISED]
    pushed = await raised.update_one(
        {"_id": item_id}, {"$push": {"history": {"$each": [step], "$sort": {"at": 1}}}}, session=session
    )
    if pushed.matched_count == 0:
        return False
    if step["status"] == ActionItemStatus.ESCALATED:
        changes: Doc = {"escalated_at": step["at"], "escalated_to": step.get("escalated_to")}
        await raised.update_one({"_id": item_id, "escalated_at": None}, {"$set": changes}, session=session)
        return True
    changes = {"status": step["status"], "assignee": step.get("assignee"), "updated_at": step["at"]}
    if step["status"] in (ActionItemStatus.DONE, ActionItemStatus.DECLINED):
        changes |= {"closed_at": step["at"], "reason": step.get("reason")}
    not_newer = {"$or": [{"updated_at": None}, {"updated_at": {"$lte": step["at"]}}]}
    await raised.update_one({"_id": item_id, **not_newer}, {"$set": changes}, session=session)
    return True


def step_of(event: Any) -> Doc:
    return {
        "status": str(event.status),
        "by": event.acted_by,
        "at": event.acted_at,
        "assignee": event.assignee,
        "reason": event.reason,
        "automatic": event.automatic,
        "escalated_to": event.escalated_to,
    }


async def on_outcome(tx: Tx, event: Any, envelope: Envelope) -> None:
    """``action_item.updated_by_<department>``: show the owning department's step on the item."""
    if not await record_step(tx.db, tx.session, event.item_id, step_of(event)):
        raise DeadLetter("unknown_action_item", f"no action item {event.item_id} was raised here")


HANDLERS: dict[str, Handler] = {
    UPDATED_BY_DEPARTMENT[d].event_type: on_outcome for d in UPDATED_BY_DEPARTMENT if d != CUSTOMER_SUCCESS
}


async def own_queue_changed(tx: Tx, item: ActionItem) -> None:
    """Customer success' own queue: its steps show on the raised item like the others'."""
    if len(item.history) == 0:
        return  # just received: the raised record was written by the raise itself
    await record_step(tx.db, tx.session, item.item_id, step_of(outcome_event(item)))


# --- raising -------------------------------------------------------------------------------------
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


class RaisedList(BaseModel):
    items: list[RaisedOut]
    count: int


class Raiser:
    """Raises action items and answers what became of them."""

    def __init__(self, store: Store, clock: Clock, queue: ActionItemQueue) -> None:
        self.store, self.clock, self.queue = store, clock, queue

    async def raise_item(self, user: Principal, body: RaiseIn) -> RaisedOut:
        now = to_millis(self.clock())
        if body.due_at <= now:
            raise RuleViolation("due_at must lie in the future", field="due_at")
        item_id = uuid.uuid4().hex

        async def work(tx: Tx) -> Doc:
            account = await tx.db[ACCOUNTS].find_one({"_id": body.account_id}, session=tx.session)
            if account is None or not can_see_account(user.roles, user.user_id, account.get("csm")):
                raise NotFound(f"no account {body.account_id}", field="account_id")
            await _check_source(tx, body)
            event = RAISED_BY_DEPARTMENT[body.department](
                item_id=item_id,
                department=body.department,
                title=body.title.strip(),
                details=body.details,
                owner=body.owner,
                due_at=body.due_at,
                account_id=body.account_id,
                account_name=str(account.get("name", "")),
                source=body.source.model_dump(),
                raised_by=user.user_id,
                raised_at=now,
            )
            doc = {**event.model_dump(mode="python"), "_id": item_id, "status": "open"}
            doc |= {"assignee": body.owner, "history": [], "source": body.source.model_dump(mode="json")}
            doc["department"] = str(body.department)
            await tx.db[RAISED].insert_one(doc, session=tx.session)
            journey = account.get("journey_id")
            tx.emit(event, correlation_id=journey)
            if body.department == CUSTOMER_SUCCESS:
                await receive_in(tx, event, now, self.queue.on_change, journey_id=journey)
            return doc

        return _out(await self.store.transaction(work))

    async def raised(
        self, user: Principal, *, account_id: str | None, department: str | None, limit: int
    ) -> list[RaisedOut]:
        query: Doc = {}
        if account_id is not None:
            await self._visible(user, account_id)
            query["account_id"] = account_id
        elif not can_see_account(user.roles, user.user_id, None):
            query["raised_by"] = user.user_id  # a CSM without an account filter: what they raised
        if department is not None:
            query["department"] = department
        cursor = self.store.db[RAISED].find(query).sort("raised_at", DESCENDING).limit(limit)
        return [_out(d) for d in await cursor.to_list()]

    async def _visible(self, user: Principal, account_id: str) -> None:
        account = await self.store.db[ACCOUNTS].find_one({"_id": account_id}, {"csm": 1})
        if account is None or not can_see_account(user.roles, user.user_id, account.get("csm")):
            raise NotFound(f"no account {account_id}", field="account_id")


async def _check_source(tx: Tx, body: RaiseIn) -> None:
    """A ticket named as the source must be one of this account's tickets."""
    if body.source.kind != SourceKind.TICKET:
        return
    ticket = await tx.db[TICKETS].find_one(
        {"_id": body.source.record_id}, {"account_id": 1}, session=tx.session
    )
    if ticket is None or ticket.get("account_id") != body.account_id:
        raise RuleViolation(
            f"ticket {body.source.record_id} is not a ticket of account {body.account_id}",
            field="source.record_id",
        )


def _out(doc: Doc) -> RaisedOut:
    data = {k: v for k, v in doc.items() if k in RaisedOut.model_fields}
    return RaisedOut(item_id=str(doc["_id"]), **{k: v for k, v in data.items() if k != "item_id"})


def get_raiser(request: Request) -> Raiser:
    raiser: Raiser = request.app.state.action_raiser
    return raiser


RaiserDep = Annotated[Raiser, Depends(get_raiser)]
router = APIRouter(tags=["action items"], dependencies=[members_only])


@router.post(
    "/action-items",
    response_model=RaisedOut,
    status_code=status.HTTP_201_CREATED,
    summary="Raise an action item for the department that owns the fix",
)
async def raise_item(body: RaiseIn, raiser: RaiserDep, user: CurrentUser) -> RaisedOut:
    return await raiser.raise_item(user, body)


@router.get("/action-items", response_model=RaisedList, summary="Action items raised, with their outcome")
async def list_raised(
    raiser: RaiserDep,
    user: CurrentUser,
    account_id: Annotated[str | None, Query(max_length=100)] = None,
    department: OwningDepartment | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> RaisedList:
    items = await raiser.raised(
        user, account_id=account_id, department=str(department) if department else None, limit=limit
    )
    return RaisedList(items=items, count=len(items))


@router.get(
    "/accounts/{account_id}/action-items",
    response_model=RaisedList,
    summary="The customer's action items and what each department did with them",
)
async def account_items(account_id: str, raiser: RaiserDep, user: CurrentUser) -> RaisedList:
    items = await raiser.raised(user, account_id=account_id, department=None, limit=500)
    return RaisedList(items=items, count=len(items))


queue_router = action_queue_router(members=MEMBERS, managers=MANAGERS, department_label="Customer success")


def wire(app: FastAPI, runtime: ServiceRuntime, clock: Clock) -> Raiser:
    queue = ActionItemQueue(
        runtime.store,
        CUSTOMER_SUCCESS,
        manager=str(Role.SERVICE_LEAD),
        clock=clock,
        on_change=own_queue_changed,
    )
    install(app, runtime, queue)
    previous = runtime.indexes

    async def indexes(db: AsyncDatabase[Doc]) -> None:
        if previous is not None:
            await previous(db)
        await ensure_indexes(db)

    runtime.indexes = indexes
    raiser = Raiser(runtime.store, clock, queue)
    app.state.action_raiser = raiser
    return raiser
