"""Customer service and success: the ticket queue, a ticket, accounts and onboarding."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Response

from console.api import action_items, success
from console.api.forms import number, text
from console.web import CSRF, Ctx, PageCtx, Refusal, read_form, redirect, submit

router = APIRouter()
PRIORITIES = ("low", "normal", "high", "urgent")


@router.get("/tickets", include_in_schema=False)
async def queue(ctx: PageCtx) -> Response:
    ctx.require("tickets")
    state = ctx.request.query_params.get("status")
    state = state if state in ("open", "resolved") else "open"
    tickets = await ctx.api.get("/api/service-desk/tickets", {"status": state, "limit": 200})
    return ctx.render("tickets.html", tickets=tickets["items"], state=state)


async def _new_ticket_page(ctx: Ctx, status: int = 200, **extra: Any) -> Response:
    accounts = await ctx.api.get("/api/service-desk/accounts", {"limit": 200})
    values = (
        extra.pop("values", None)
        or ctx.draft()
        or {"account_id": ctx.request.query_params.get("account", "")}
    )
    options = [(a["account_id"], a["name"]) for a in accounts["items"]]
    return ctx.render(
        "ticket_new.html",
        status=status,
        account_options=options,
        priorities=PRIORITIES,
        values=values,
        **extra,
    )


@router.get("/tickets/new", include_in_schema=False)
async def new_ticket(ctx: PageCtx) -> Response:
    ctx.require("tickets")
    return await _new_ticket_page(ctx)


@router.post("/tickets/new", include_in_schema=False, dependencies=CSRF)
async def open_ticket(ctx: PageCtx) -> Response:
    ctx.require("tickets")
    form = await read_form(ctx.request)
    body = {
        "account_id": form.get("account_id", ""),
        "subject": form.get("subject", "").strip(),
        "request": form.get("request", "").strip(),
        "priority": form.get("priority") or "normal",
        "assign_to": "me" if form.get("assign_to") == "me" else "csm",
    }
    ticket = await submit(ctx.api.post("/api/service-desk/tickets", body))
    if isinstance(ticket, Refusal):
        return await _new_ticket_page(ctx, **ticket.page(values=form))
    return redirect(f"/tickets/{ticket['ticket_id']}", "ticket")


async def _ticket_page(ctx: Ctx, ticket_id: str, status: int = 200, **extra: Any) -> Response:
    ticket = await ctx.api.get(f"/api/service-desk/tickets/{ticket_id}")
    return ctx.render(
        "ticket.html",
        status=status,
        ticket=ticket,
        values=extra.pop("values", None) or ctx.draft() or {},
        **extra,
    )


@router.get("/tickets/{ticket_id}", include_in_schema=False)
async def ticket_page(ctx: PageCtx, ticket_id: str) -> Response:
    ctx.require("ticket")
    return await _ticket_page(ctx, ticket_id)


@router.post("/tickets/{ticket_id}/{action}", include_in_schema=False, dependencies=CSRF)
async def ticket_action(ctx: PageCtx, ticket_id: str, action: str) -> Response:
    ctx.require("ticket")
    form = await read_form(ctx.request)
    body: dict[str, Any]
    if action == "progress":
        body = {"note": form.get("note", "").strip()}
    elif action == "resolve":
        body = {"result": form.get("result", "").strip()}
    elif action == "survey":
        # CSAT comes from the customer, by a signed single-use link: shown here once, to send.
        sent = await submit(ctx.api.post(f"/api/service-desk/tickets/{ticket_id}/csat-survey"))
        if isinstance(sent, Refusal):
            return await _ticket_page(ctx, ticket_id, status=sent.page()["status"], error=sent.message)
        return await _ticket_page(ctx, ticket_id, survey=sent)
    else:
        return redirect(f"/tickets/{ticket_id}")
    path = f"/api/service-desk/tickets/{ticket_id}/{action}"
    answer = await submit(ctx.api.post(path, body), field=next(iter(body)))
    if isinstance(answer, Refusal):
        return await _ticket_page(ctx, ticket_id, **answer.page(values=form))
    return redirect(f"/tickets/{ticket_id}", {"progress": "progress", "resolve": "resolved"}[action])


@router.get("/accounts", include_in_schema=False)
async def accounts(ctx: PageCtx) -> Response:
    ctx.require("accounts")
    q = ctx.request.query_params
    state = q.get("onboarding_status") if q.get("onboarding_status") in ("in_progress", "completed") else None
    data = await ctx.api.get("/api/service-desk/accounts", {"onboarding_status": state, "limit": 200})
    health = await success.account_health(ctx.api, [a["account_id"] for a in data["items"]])
    return ctx.render("accounts.html", accounts=data["items"], state=state, health=health)


async def _account_page(ctx: Ctx, account_id: str, status: int = 200, **extra: Any) -> Response:
    # Six independent reads: concurrently, so the page takes the slowest one, not their sum.
    base = f"/api/service-desk/accounts/{account_id}"
    account, tickets, health, checkins, renewals, items = await asyncio.gather(
        ctx.api.get(base),
        ctx.api.get("/api/service-desk/tickets", {"account_id": account_id, "limit": 100}),
        ctx.api.get(f"{base}/health"),
        ctx.api.get(f"{base}/checkins"),
        ctx.api.get(f"{base}/renewals"),
        ctx.api.get(f"{base}/action-items"),
    )
    return ctx.render(
        "account.html",
        status=status,
        account=account,
        tickets=tickets["items"],
        health=health,
        checkins=checkins["items"],
        renewals=renewals["items"],
        action_items=items["items"],
        ticket_options=[(t["ticket_id"], t["subject"]) for t in tickets["items"]],
        departments=[(q.department, q.label) for q in action_items.QUEUES],
        values=extra.pop("values", None) or ctx.draft() or {},
        **extra,
    )


@router.get("/accounts/{account_id}", include_in_schema=False)
async def account_page(ctx: PageCtx, account_id: str) -> Response:
    ctx.require("account")
    return await _account_page(ctx, account_id)


@router.post("/accounts/{account_id}/checklist/{item}", include_in_schema=False, dependencies=CSRF)
async def complete_item(ctx: PageCtx, account_id: str, item: str) -> Response:
    ctx.require("account")
    path = f"/api/service-desk/accounts/{account_id}/checklist/{item}/complete"
    answer = await submit(ctx.api.post(path), field=f"checklist.{item}")
    if isinstance(answer, Refusal):
        return await _account_page(ctx, account_id, **answer.page())
    return redirect(f"/accounts/{account_id}", "checklist")


@router.post(
    "/accounts/{account_id}/commitments/{commitment_id}/{action}", include_in_schema=False, dependencies=CSRF
)
async def commitment(ctx: PageCtx, account_id: str, commitment_id: str, action: str) -> Response:
    ctx.require("account")
    form = await read_form(ctx.request)
    if action not in ("flag", "deliver"):
        return redirect(f"/accounts/{account_id}")
    body = {"reason": form.get("reason", "").strip()} if action == "flag" else {}
    path = f"/api/service-desk/accounts/{account_id}/commitments/{commitment_id}/{action}"
    answer = await submit(ctx.api.post(path, body), field="reason")
    if isinstance(answer, Refusal):
        # The one field of this form is the reason: any refusal is shown next to it.
        refusal = Refusal(
            answer.status, {"reason": answer.errors.get("reason", answer.message or "")}, answer.message
        )
        return await _account_page(ctx, account_id, **refusal.page(values=form, prefix=f"{commitment_id}."))
    return redirect(f"/accounts/{account_id}", "flagged" if action == "flag" else "delivered")


@router.post("/accounts/{account_id}/signals", include_in_schema=False, dependencies=CSRF)
async def signal(ctx: PageCtx, account_id: str) -> Response:
    ctx.require("account")
    form = await read_form(ctx.request)
    errors: dict[str, str] = {}
    value = number(form, "estimated_value", errors)
    body = {
        "kind": form.get("kind", ""),
        "description": form.get("description", "").strip(),
        "estimated_value": form["estimated_value"].strip() if value is not None else None,
    }
    answer = (
        Refusal(422, errors, None)
        if errors
        else await submit(ctx.api.post(f"/api/service-desk/accounts/{account_id}/signals", body))
    )
    if isinstance(answer, Refusal):
        return await _account_page(ctx, account_id, **answer.page(values=form, prefix="signal."))
    return redirect(f"/accounts/{account_id}", "signal")


@router.post("/accounts/{account_id}/action-items", include_in_schema=False, dependencies=CSRF)
async def raise_item(ctx: PageCtx, account_id: str) -> Response:
    """Raise an action item for the department that owns the fix, from this account."""
    ctx.require("account")
    form = await read_form(ctx.request)
    errors: dict[str, str] = {}
    body = action_items.raise_body(account_id, form, errors)
    answer = (
        Refusal(422, errors, "Check the marked fields.")
        if errors
        else await submit(ctx.api.post("/api/service-desk/action-items", body))
    )
    if isinstance(answer, Refusal):
        return await _account_page(ctx, account_id, **answer.page(values=form, prefix="raise."))
    return redirect(f"/accounts/{account_id}", "raised")


__all__ = ["router", "text"]
