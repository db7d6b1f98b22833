"""Action items: each department works its queue; customer success raises them from an account.

Marketing, sales and customer success each keep their items in their own service behind the
same routes (``/action-queue``): open, overdue, escalated and closed views, "assigned to me",
accept, mark done with a note, decline with a reason, and (the department's manager)
assign. A user works the queue of the department their role belongs to; an administrator
picks one. Customer success raises an item on the account page; what the owning department
did with it shows there too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from fastapi import APIRouter, Response

from console.api.forms import text
from console.domain import pages
from console.web import CSRF, Ctx, PageCtx, Refusal, read_form, redirect, submit

router = APIRouter()
VIEWS = ("open", "overdue", "escalated", "closed")
STEPS = ("accept", "complete", "decline", "assign")


@dataclass(frozen=True)
class Queue:
    department: str  # as the contracts name it
    label: str
    api: str  # the queue's routes on the gateway
    members: frozenset[str]
    managers: frozenset[str]
    roster: str | None  # where the department's people are listed (to assign to), if anywhere


QUEUES = (
    Queue(
        "customer-success",
        "Customer success",
        "/api/service-desk/action-queue",
        pages.SERVICE,
        frozenset({pages.SERVICE_LEAD, pages.ADMIN}),
        "/api/service-desk/csms",
    ),
    Queue(
        "sales",
        "Sales",
        "/api/sales/action-queue",
        pages.SALES,
        frozenset({pages.SALES_MANAGER, pages.ADMIN}),
        "/api/sales/reps",
    ),
    Queue(
        "marketing",
        "Marketing",
        "/api/leads/action-queue",
        pages.MARKETERS,
        frozenset({pages.MARKETING_MANAGER, pages.ADMIN}),
        None,
    ),
)
BY_DEPARTMENT = {q.department: q for q in QUEUES}


def queue_for(roles: frozenset[str], asked: str | None) -> Queue | None:
    """The queue the user works: the one asked for if their roles reach it, else their own."""
    reachable = [q for q in QUEUES if roles & q.members]
    chosen = BY_DEPARTMENT.get(asked or "")
    if chosen in reachable:
        return chosen
    own = [q for q in reachable if roles & (q.members - {pages.ADMIN})]
    preferred = own or reachable
    return preferred[0] if preferred else None


def step_body(step: str, form: dict[str, str], errors: dict[str, str]) -> dict[str, Any] | None:
    """The body of an accept / complete / decline / assign (None: not a step)."""
    if step == "accept":
        return {}
    if step == "complete":
        return {"note": text(form, "note")}
    if step == "decline":
        reason = text(form, "reason")
        if not reason:
            errors["reason"] = "Say why your department declines it."
        return {"reason": reason or ""}
    if step == "assign":
        assignee = text(form, "assignee")
        if not assignee:
            errors["assignee"] = "Choose who takes it."
        return {"assignee": assignee or ""}
    return None


async def _people(ctx: Ctx, queue: Queue) -> list[tuple[str, str]]:
    """Who a manager may assign to: the department's active roster (none kept for marketing)."""
    if queue.roster is None or not ctx.has(queue.managers):
        return []
    roster = await ctx.api.get(queue.roster)
    entries = roster.get("reps") or roster.get("csms") or []
    return [(e["user_id"], e.get("name") or e["user_id"]) for e in entries if e.get("active", True)]


async def _queue_page(ctx: Ctx, queue: Queue, status: int = 200, **extra: Any) -> Response:
    q = ctx.request.query_params
    view = q.get("view") if q.get("view") in VIEWS else "open"
    mine = q.get("mine") == "true"
    data = await ctx.api.get(queue.api, {"view": view, "mine": "true" if mine else None, "limit": 200})
    reachable = [r for r in QUEUES if ctx.has(r.members)]
    people = await _people(ctx, queue)
    return ctx.render(
        "action_items.html",
        status=status,
        queue=queue,
        queues=reachable if len(reachable) > 1 else [],
        view=view,
        views=VIEWS,
        mine=mine,
        items=data["items"],
        people=people,
        people_names=dict(people),
        manager=ctx.has(queue.managers),
        values=extra.pop("values", None) or {},
        **extra,
    )


@router.get("/action-items", include_in_schema=False)
async def action_queue(ctx: PageCtx) -> Response:
    ctx.require("action_items")
    queue = queue_for(ctx.roles, ctx.request.query_params.get("department"))
    assert queue is not None  # the page's roles are the queues' members
    return await _queue_page(ctx, queue)


@router.post("/action-items/{department}/{item_id}/{step}", include_in_schema=False, dependencies=CSRF)
async def work_item(ctx: PageCtx, department: str, item_id: str, step: str) -> Response:
    ctx.require("action_items")
    queue = queue_for(ctx.roles, department)
    form = await read_form(ctx.request)
    errors: dict[str, str] = {}
    body = step_body(step, form, errors)
    if queue is None or queue.department != department or body is None:
        return redirect("/action-items")
    back = f"/action-items?department={department}&view={form.get('view') or 'open'}"
    answer = (
        Refusal(422, errors, "Check the marked field.")
        if errors
        else await submit(ctx.api.post(f"{queue.api}/{item_id}/{step}", body))
    )
    if not isinstance(answer, Refusal):
        return redirect(back, f"item_{step}")
    return await _queue_page(
        ctx, queue, **answer.page(values={**form, "item_id": item_id}, prefix=f"{item_id}.")
    )


def raise_body(account_id: str, form: dict[str, str], errors: dict[str, str]) -> dict[str, Any]:
    """The account page's form as ``POST /action-items`` (the account itself as the source)."""
    department = form.get("department", "")
    if department not in BY_DEPARTMENT:
        errors["department"] = "Choose the department that owns the fix."
    title = text(form, "title")
    if not title:
        errors["title"] = "Say what is to be done."
    due = (form.get("due_at") or "").strip()
    try:
        due_at = f"{date.fromisoformat(due).isoformat()}T17:00:00Z"
    except ValueError:
        errors["due_at"] = f"'{due}' is not a date (YYYY-MM-DD)." if due else "Enter the due date."
        due_at = ""
    source_id = text(form, "source_id")
    kind = "ticket" if source_id else "account_note"
    return {
        "department": department,
        "title": title or "",
        "details": text(form, "details"),
        "due_at": due_at,
        "account_id": account_id,
        "source": {"kind": kind, "record_id": source_id or account_id, "excerpt": text(form, "excerpt")},
    }
