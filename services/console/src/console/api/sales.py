"""Sales: the inbox with SLA countdowns, the pipeline board, a deal's page, forecast, team."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Response

from console.api.forms import FIELD_LABELS, number, stage_fields, text
from console.api_client import ApiError
from console.domain import charts
from console.domain.pages import SALES, SALES_LEADS
from console.web import CSRF, Ctx, PageCtx, Refusal, read_form, redirect, submit

router = APIRouter()
REJECT_REASONS = (
    "no_budget",
    "no_authority",
    "no_need",
    "bad_timing",
    "competitor",
    "bad_data",
    "duplicate",
    "not_a_fit",
)
ACTIVITY_TYPES = ("call", "visit", "email", "quote")


async def roster(ctx: Ctx) -> dict[str, str]:
    """Rep user id -> name, for showing owners (empty when the roster cannot be read)."""
    try:
        reps = await ctx.api.get("/api/sales/reps")
    except ApiError:
        return {}
    return {r["user_id"]: r.get("name") or r["user_id"] for r in reps["reps"]}


async def _inbox_page(ctx: Ctx, status: int = 200, **extra: Any) -> Response:
    q = dict(ctx.request.query_params)
    state = (
        q.get("status") if q.get("status") in ("pending", "accepted", "rejected", "recycled") else "pending"
    )
    page = await ctx.api.get("/api/sales/inbox", {"status": state, "overdue": q.get("overdue"), "limit": 100})
    names = await roster(ctx)
    manager = ctx.has(SALES_LEADS)
    return ctx.render(
        "inbox.html",
        status=status,
        items=page["items"],
        total=page["total"],
        state=state,
        names=names,
        manager=manager,
        reasons=REJECT_REASONS,
        **extra,
    )


@router.get("/inbox", include_in_schema=False)
async def inbox(ctx: PageCtx) -> Response:
    ctx.require("inbox")
    return await _inbox_page(ctx)


@router.post("/inbox/{lead_id}/{action}", include_in_schema=False, dependencies=CSRF)
async def decide(ctx: PageCtx, lead_id: str, action: str) -> Response:
    ctx.require("inbox")
    form = await read_form(ctx.request)
    body: dict[str, Any]
    if action == "accept":
        body = {"note": text(form, "note")}
    elif action == "reject":
        body = {"reason_code": form.get("reason_code", ""), "note": text(form, "note")}
    elif action == "recycle":
        body = {"note": text(form, "note")}
    elif action == "assign" and ctx.has(SALES_LEADS):
        body = {"owner": text(form, "owner")}
    else:
        return redirect("/inbox")
    out = await submit(ctx.api.post(f"/api/sales/inbox/{lead_id}/{action}", body))
    if isinstance(out, Refusal):
        return await _inbox_page(ctx, **out.page(prefix=f"{lead_id}."))
    if action == "accept" and out.get("opportunity"):
        return redirect(f"/opportunities/{out['opportunity']['id']}", "accepted")
    return redirect("/inbox", {"reject": "rejected", "recycle": "recycled", "assign": "assigned"}.get(action))


def missing_fields(opp: dict[str, Any], stage: dict[str, Any]) -> list[str]:
    """The stage's required fields the deal does not have yet (asked for in place)."""
    have = dict(opp.get("fields") or {})
    have.update(
        {
            "amount": opp.get("amount"),
            "products": opp.get("products"),
            "commitments": opp.get("commitments"),
            "lost_reason": opp.get("lost_reason") or have.get("lost_reason"),
        }
    )
    return [f for f in stage.get("required_fields", []) if not have.get(f)]


@router.get("/pipeline", include_in_schema=False)
async def board(ctx: PageCtx) -> Response:
    ctx.require("pipeline")
    pipeline = await ctx.api.get("/api/sales/pipeline")
    page = await ctx.api.get("/api/sales/opportunities", {"limit": 200})
    names = await roster(ctx) if ctx.has(SALES_LEADS) else {}
    stages = pipeline["stages"]
    columns = [
        {
            "stage": s,
            "next": following,
            "deals": [
                {**o, "missing": missing_fields(o, following) if following else []}
                for o in page["items"]
                if o["stage"] == s["name"]
            ],
        }
        for i, s in enumerate(stages)
        # The next stage in order (an open deal moves on from the board; won and lost on its page).
        for following in [stages[i + 1] if i + 1 < len(stages) and not s["closed"] else None]
    ]
    return ctx.render(
        "pipeline.html",
        columns=columns,
        names=names,
        manager=ctx.has(SALES_LEADS),
        total=page["total"],
        labels=FIELD_LABELS,
    )


async def _opportunity_page(ctx: Ctx, opp_id: str, status: int = 200, **extra: Any) -> Response:
    opp = await ctx.api.get(f"/api/sales/opportunities/{opp_id}")
    pipeline = await ctx.api.get("/api/sales/pipeline")
    moves = [
        {"stage": s, "missing": missing_fields(opp, s)}
        for s in pipeline["stages"]
        if s["name"] != opp["stage"] and opp["status"] == "open"
    ]
    return ctx.render(
        "opportunity.html",
        status=status,
        opp=opp,
        moves=moves,
        labels=FIELD_LABELS,
        activity_types=ACTIVITY_TYPES,
        values=extra.pop("values", None) or ctx.draft() or {},
        **extra,
    )


@router.get("/opportunities/{opp_id}", include_in_schema=False)
async def opportunity(ctx: PageCtx, opp_id: str) -> Response:
    ctx.require("opportunity")
    return await _opportunity_page(ctx, opp_id)


@router.post("/opportunities/{opp_id}/stage", include_in_schema=False, dependencies=CSRF)
async def move(ctx: PageCtx, opp_id: str) -> Response:
    ctx.require("opportunity")
    form = await read_form(ctx.request)
    fields, errors = stage_fields(form)
    stage = form.get("stage", "")
    back = form.get("_back") or f"/opportunities/{opp_id}"
    path = f"/api/sales/opportunities/{opp_id}/stage"
    answer = (
        Refusal(422, errors, "Check the marked fields.")
        if errors
        else await submit(ctx.api.post(path, {"stage": stage, "fields": fields}))
    )
    if isinstance(answer, Refusal):
        # ``fields.amount`` -> ``amount``: the field as the stage's form names it.
        named = Refusal(
            answer.status, {k.split(".")[-1]: v for k, v in answer.errors.items()}, answer.message
        )
        return await _opportunity_page(
            ctx, opp_id, open_stage=stage, **named.page(values=form, prefix=f"{stage}.")
        )
    return redirect(back if back.startswith("/") and not back.startswith("//") else "/pipeline", "moved")


@router.post("/opportunities/{opp_id}/activities", include_in_schema=False, dependencies=CSRF)
async def log_activity(ctx: PageCtx, opp_id: str) -> Response:
    ctx.require("opportunity")
    form = await read_form(ctx.request)
    errors: dict[str, str] = {}
    amount = number(form, "amount", errors)
    body = {
        "type": form.get("type", ""),
        "summary": form.get("summary", "").strip(),
        "amount": form["amount"].strip() if amount is not None else None,
    }
    path = f"/api/sales/opportunities/{opp_id}/activities"
    answer = Refusal(422, errors, None) if errors else await submit(ctx.api.post(path, body))
    if isinstance(answer, Refusal):
        return await _opportunity_page(ctx, opp_id, **answer.page(values=form, prefix="activity."))
    return redirect(f"/opportunities/{opp_id}", "activity")


@router.post("/opportunities/{opp_id}/review", include_in_schema=False, dependencies=CSRF)
async def request_review(ctx: PageCtx, opp_id: str) -> Response:
    """Ask customer success to review the deal's commitments as they are now."""
    ctx.require("opportunity")
    answer = await submit(ctx.api.post(f"/api/sales/opportunities/{opp_id}/commitment-review"))
    if isinstance(answer, Refusal):
        return await _opportunity_page(ctx, opp_id, **answer.page(prefix="review."))
    return redirect(f"/opportunities/{opp_id}", "review_requested")


@router.get("/forecast", include_in_schema=False)
async def forecast(ctx: PageCtx) -> Response:
    ctx.require("forecast")
    data = await ctx.api.get("/api/sales/forecast")
    bars = [
        charts.Bar(s["stage"], float(s["weighted"]), charts.format_number(s["weighted"], 2))
        for s in data["stages"]
        if not s["closed"] or s["stage"] == "won"
    ]
    chart = charts.bar_chart("Weighted value per stage", bars)
    return ctx.render("forecast.html", data=data, chart=chart, team=data.get("scope") != "own")


RESPONSE_DAYS = (7, 30, 90)


async def _team_page(ctx: Ctx, status: int = 200, **extra: Any) -> Response:
    raw_days = ctx.request.query_params.get("days", "")
    days = int(raw_days) if raw_days.isdigit() and int(raw_days) in RESPONSE_DAYS else 30
    reps, config, times = await asyncio.gather(
        ctx.api.get("/api/sales/reps"),
        ctx.api.get("/api/sales/config"),
        ctx.api.get("/api/sales/reps/response-times", {"days": days}),
    )
    names = {r["user_id"]: r.get("name") or r["user_id"] for r in reps["reps"]}
    bars = [
        charts.Bar(names.get(r["owner"], r["owner"] or "unassigned"), float(r["p50_seconds"]),
                   charts.format_seconds(r["p50_seconds"]))
        for r in times["reps"]
        if r["p50_seconds"] is not None
    ]  # fmt: skip
    chart = charts.bar_chart(f"Median time to answer a lead, last {days} days", bars)
    return ctx.render(
        "team.html",
        status=status,
        reps=reps,
        config=config,
        times=times,
        names=names,
        days=days,
        day_choices=RESPONSE_DAYS,
        response_chart=chart,
        **extra,
    )


@router.get("/team", include_in_schema=False)
async def team(ctx: PageCtx) -> Response:
    ctx.require("team")
    return await _team_page(ctx)


@router.post("/team/sla", include_in_schema=False, dependencies=CSRF)
async def save_sla(ctx: PageCtx) -> Response:
    ctx.require("team")
    form = await read_form(ctx.request)
    errors: dict[str, str] = {}
    minutes = number(form, "lead_response_sla_minutes", errors, required=True)
    body = {"lead_response_sla_minutes": int(minutes or 0)}
    answer = (
        Refusal(422, errors, None)
        if errors
        else await submit(ctx.api.put("/api/sales/config", body), field="lead_response_sla_minutes")
    )
    if isinstance(answer, Refusal):
        return await _team_page(ctx, **{**answer.page(), "error": None})
    return redirect("/team", "sla")


@router.post("/team/reps/{user_id}", include_in_schema=False, dependencies=CSRF)
async def set_rep_active(ctx: PageCtx, user_id: str) -> Response:
    ctx.require("team")
    form = await read_form(ctx.request)
    body = {"active": form.get("active") == "true", "name": text(form, "name")}
    answer = await submit(ctx.api.put(f"/api/sales/reps/{user_id}", body))
    if isinstance(answer, Refusal):
        refusal = Refusal(answer.status, {"form": answer.message or ""}, None)
        return await _team_page(ctx, **refusal.page(prefix=f"{user_id}."))
    return redirect("/team", "roster")


def is_manager(ctx: Ctx) -> bool:
    return ctx.has(SALES_LEADS)


__all__ = ["SALES", "router"]
