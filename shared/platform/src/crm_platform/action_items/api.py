"""The HTTP routes over one department's action-item queue (a router factory).

Every department mounts the same routes under ``/action-queue`` (the gateway's
route table has one rule per department service); members work items, managers
also (re)assign them. The queue is found at ``request.app.state.action_queue``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from crm_platform.action_items.domain import ActionItem, View
from crm_platform.action_items.handlers import Accept, ActionItemQueue, Assign, Command, Complete, Decline
from crm_platform.auth import CurrentUser, require_roles

PREFIX = "/action-queue"


def get_queue(request: Request) -> ActionItemQueue:
    queue: ActionItemQueue = request.app.state.action_queue
    return queue


Queue = Annotated[ActionItemQueue, Depends(get_queue)]


class StepOut(BaseModel):
    status: str
    by: str
    at: datetime
    assignee: str | None = None
    reason: str | None = None
    automatic: bool = False


class ActionItemOut(BaseModel):
    item_id: str
    department: str
    title: str
    details: str | None
    status: str
    assignee: str | None
    due_at: datetime
    overdue: bool
    account_id: str
    account_name: str
    source: dict[str, Any]
    raised_by: str
    raised_at: datetime
    received_at: datetime
    first_action_at: datetime | None
    closed_at: datetime | None
    reason: str | None
    escalated_at: datetime | None
    escalated_to: str | None
    history: list[StepOut]

    @classmethod
    def of(cls, item: ActionItem, now: datetime) -> ActionItemOut:
        return cls(
            item_id=item.item_id,
            department=item.department,
            title=item.title,
            details=item.details,
            status=str(item.status),
            assignee=item.assignee,
            due_at=item.due_at,
            overdue=item.is_overdue(now),
            account_id=item.account_id,
            account_name=item.account_name,
            source=item.source,
            raised_by=item.raised_by,
            raised_at=item.raised_at,
            received_at=item.received_at,
            first_action_at=item.first_action_at,
            closed_at=item.closed_at,
            reason=item.reason,
            escalated_at=item.escalated_at,
            escalated_to=item.escalated_to,
            history=[StepOut(**vars(s)) for s in item.history],
        )


class ActionItemList(BaseModel):
    view: View
    items: list[ActionItemOut]
    count: int


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AssignIn(_In):
    assignee: str = Field(
        min_length=1, max_length=100, pattern=r"\S", description="A user id of the department"
    )


class CompleteIn(_In):
    note: str | None = Field(default=None, max_length=2000, description="What was done")


class DeclineIn(_In):
    reason: str = Field(
        min_length=1, max_length=2000, pattern=r"\S", description="Why the department declines"
    )


def action_queue_router(
    *, members: Iterable[str], managers: Iterable[str], department_label: str
) -> APIRouter:
    """The queue's routes: members list and work items; managers also assign them.

    The members' role check is on the router once; ``assign`` narrows it to the managers.
    """
    router = APIRouter(prefix=PREFIX, tags=["action items"], dependencies=[require_roles(*sorted(members))])
    _read_routes(router, department_label)
    _work_routes(router, require_roles(*sorted(managers)))
    return router


def _read_routes(router: APIRouter, department_label: str) -> None:
    @router.get(
        "",
        response_model=ActionItemList,
        summary=f"{department_label}'s action items: open, overdue, escalated or closed",
    )
    async def list_items(
        queue: Queue,
        user: CurrentUser,
        view: View = View.OPEN,
        mine: Annotated[bool, Query(description="Only the items assigned to me")] = False,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> ActionItemList:
        items = await queue.in_view(view, assignee=user.user_id if mine else None, limit=limit)
        now = queue.clock()
        return ActionItemList(view=view, items=[ActionItemOut.of(i, now) for i in items], count=len(items))

    @router.get("/{item_id}", response_model=ActionItemOut)
    async def get_item(item_id: str, queue: Queue) -> ActionItemOut:
        return ActionItemOut.of(await queue.get(item_id), queue.clock())


async def _act(queue: ActionItemQueue, item_id: str, command: Command, user_id: str) -> ActionItemOut:
    return ActionItemOut.of(await queue.act(item_id, command, user_id), queue.clock())


def _work_routes(router: APIRouter, manager_roles: Any) -> None:
    @router.post("/{item_id}/accept", response_model=ActionItemOut)
    async def accept(item_id: str, queue: Queue, user: CurrentUser) -> ActionItemOut:
        return await _act(queue, item_id, Accept(), user.user_id)

    @router.post(
        "/{item_id}/assign",
        response_model=ActionItemOut,
        dependencies=[manager_roles],
        summary="(Re)assign an item to a user of the department (managers)",
    )
    async def assign(item_id: str, body: AssignIn, queue: Queue, user: CurrentUser) -> ActionItemOut:
        return await _act(queue, item_id, Assign(body.assignee.strip()), user.user_id)

    @router.post("/{item_id}/complete", response_model=ActionItemOut)
    async def complete(
        item_id: str, queue: Queue, user: CurrentUser, body: CompleteIn | None = None
    ) -> ActionItemOut:
        return await _act(queue, item_id, Complete(body.note if body else None), user.user_id)

    @router.post("/{item_id}/decline", response_model=ActionItemOut)
    async def decline(item_id: str, body: DeclineIn, queue: Queue, user: CurrentUser) -> ActionItemOut:
        return await _act(queue, item_id, Decline(body.reason.strip()), user.user_id)
