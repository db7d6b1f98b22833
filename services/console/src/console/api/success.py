"""Customer success: renewals due (record the outcome) and check-ins due (log one).

Both lists come from service-desk's API through the gateway (a CSM sees their own book); a
form's refusal by the API is shown in words next to its row's fields, with what was typed.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Response

from console.api.forms import CHURN_REASONS, RENEWAL_OUTCOMES, SENTIMENTS, checkin_body, renewal_body
from console.api_client import UserApi
from console.web import CSRF, Ctx, PageCtx, Refusal, read_form, redirect, submit

router = APIRouter()
HEALTH_CALLS = 8  # the account list's health look-ups in flight at once


async def account_health(api: UserApi, account_ids: list[str]) -> dict[str, dict[str, Any] | None]:
    """Each account's current health state (None until first scored), a few calls at a time."""
    gate = asyncio.Semaphore(HEALTH_CALLS)

    async def one(account_id: str) -> dict[str, Any] | None:
        async with gate:
            health = await api.get(f"/api/service-desk/accounts/{account_id}/health")
        current: dict[str, Any] | None = health.get("current")
        return current

    states = await asyncio.gather(*(one(a) for a in account_ids))
    return dict(zip(account_ids, states, strict=True))


def bounded(raw: str | None, low: int, high: int) -> int | None:
    """A whole number of days from the query or a form, within the API's bounds; else None."""
    raw = (raw or "").strip()
    return int(raw) if raw.isdigit() and low <= int(raw) <= high else None


async def _sent(ctx: Ctx, path: str, body: dict[str, Any], errors: dict[str, str]) -> Refusal | None:
    """None when the API took the form; else why not (the form's own errors first)."""
    if errors:
        return Refusal(422, errors, None)
    answer = await submit(ctx.api.post(path, body))
    return answer if isinstance(answer, Refusal) else None


async def _renewals_page(ctx: Ctx, window: int | None, status: int = 200, **extra: Any) -> Response:
    due = await ctx.api.get("/api/service-desk/renewals", {"window_days": window})
    items = sorted(due["items"], key=lambda r: (not r["overdue"], r["renewal_date"]))
    return ctx.render(
        "renewals.html",
        status=status,
        renewals=items,
        window_days=due["window_days"],
        asked_window=window,
        outcomes=RENEWAL_OUTCOMES,
        churn_reasons=CHURN_REASONS,
        values=extra.pop("values", None) or ctx.draft() or {},
        **extra,
    )


@router.get("/renewals", include_in_schema=False)
async def renewals(ctx: PageCtx) -> Response:
    ctx.require("renewals")
    return await _renewals_page(ctx, bounded(ctx.request.query_params.get("window_days"), 1, 730))


@router.post("/renewals/{account_id}", include_in_schema=False, dependencies=CSRF)
async def record_renewal(ctx: PageCtx, account_id: str) -> Response:
    ctx.require("renewals")
    form = await read_form(ctx.request)
    errors: dict[str, str] = {}
    body = renewal_body(form, errors)
    path = f"/api/service-desk/accounts/{account_id}/renewals"
    refused = await _sent(ctx, path, body, errors)
    if refused is None:
        return redirect("/renewals", "renewal")
    window = bounded(form.get("window_days"), 1, 730)
    return await _renewals_page(
        ctx, window, **refused.page(values={**form, "account_id": account_id}, prefix=f"{account_id}.")
    )


async def _checkins_page(ctx: Ctx, horizon: int | None, status: int = 200, **extra: Any) -> Response:
    due = await ctx.api.get("/api/service-desk/checkins/due", {"horizon_days": horizon})
    items = sorted(due["items"], key=lambda c: (not c["overdue"], c["due_at"]))
    return ctx.render(
        "checkins.html",
        status=status,
        checkins=items,
        horizon_days=horizon,
        sentiments=SENTIMENTS,
        values=extra.pop("values", None) or ctx.draft() or {},
        **extra,
    )


@router.get("/checkins", include_in_schema=False)
async def checkins(ctx: PageCtx) -> Response:
    ctx.require("checkins")
    return await _checkins_page(ctx, bounded(ctx.request.query_params.get("horizon_days"), 0, 366))


@router.post("/checkins/{account_id}", include_in_schema=False, dependencies=CSRF)
async def log_checkin(ctx: PageCtx, account_id: str) -> Response:
    ctx.require("checkins")
    form = await read_form(ctx.request)
    errors: dict[str, str] = {}
    body = checkin_body(form, errors)
    path = f"/api/service-desk/accounts/{account_id}/checkins"
    refused = await _sent(ctx, path, body, errors)
    if refused is None:
        return redirect("/checkins", "checkin")
    horizon = bounded(form.get("horizon_days"), 0, 366)
    return await _checkins_page(
        ctx, horizon, **refused.page(values={**form, "account_id": account_id}, prefix=f"{account_id}.")
    )
