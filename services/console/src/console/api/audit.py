"""The audit log (auditors and admins): who changed what, when, in every service; CSV export.

Each service keeps its own audit log behind ``GET .../audit`` (the gateway its users' at
``/audit``). The page queries one service, or all of them at once (their newest entries
merged, newest first), by acting user, record and period; one service's listing pages with
its cursor. The export streams that service's CSV from the gateway through the console.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Response
from fastapi.responses import StreamingResponse

from console.api_client import ApiError
from console.domain import charts
from console.web import Ctx, PageCtx

router = APIRouter()
# The service as the auditor picks it -> its audit API on the gateway.
SOURCES = {
    "gateway": "/audit",
    "leads": "/api/leads/audit",
    "sales": "/api/sales/audit",
    "service-desk": "/api/service-desk/audit",
}
SERVICE_OPTIONS = (
    ("all", "all services"),
    ("gateway", "gateway (users, logins)"),
    ("leads", "leads (marketing)"),
    ("sales", "sales"),
    ("service-desk", "service desk (customer service and success)"),
)
LIMITS = ("25", "50", "100", "200")
FILTERS = ("user_id", "record_type", "record_id", "since", "until")


def _day(raw: str, name: str, errors: dict[str, str], *, end: bool) -> str | None:
    """A ``YYYY-MM-DD`` field as the API's time; an end date includes its whole day."""
    raw = raw.strip()
    if not raw:
        return None
    try:
        day = date.fromisoformat(raw)
    except ValueError:
        errors[name] = f"'{raw}' is not a date (YYYY-MM-DD)."
        return None
    if end:
        day += timedelta(days=1)
    return f"{day.isoformat()}T00:00:00Z"


def audit_query(q: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The page's query as the audit API's filters, and the fields in error (pure)."""
    errors: dict[str, str] = {}
    params: dict[str, Any] = {k: (q.get(k) or "").strip()[:200] or None for k in FILTERS[:3]}
    if params["record_id"] and not params["record_type"]:
        errors["record_type"] = "Name the record type (e.g. leads, opportunities, accounts) of this id."
    params["since"] = _day(q.get("since", ""), "since", errors, end=False)
    params["until"] = _day(q.get("until", ""), "until", errors, end=True)
    if params["since"] and params["until"] and params["since"] >= params["until"]:
        errors["until"] = "The period ends before it starts."
    return params, errors


def merge_newest_first(pages: dict[str, list[dict[str, Any]]], limit: int) -> list[dict[str, Any]]:
    """Entries of several services as one list, newest first, at most ``limit``."""
    entries = [e for items in pages.values() for e in items]
    entries.sort(key=lambda e: (str(e.get("at", "")), str(e.get("id", ""))), reverse=True)
    return entries[:limit]


async def _query(ctx: Ctx, service: str, params: dict[str, Any], limit: int, cursor: str | None) -> Any:
    return await ctx.api.get(SOURCES[service], {**params, "limit": limit, "cursor": cursor})


async def _all(ctx: Ctx, params: dict[str, Any], limit: int) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Every service's newest entries; a service that refuses or fails is named, not fatal."""
    names = list(SOURCES)
    answers = await asyncio.gather(
        *(_query(ctx, s, params, limit, None) for s in names), return_exceptions=True
    )
    pages: dict[str, list[dict[str, Any]]] = {}
    failed: dict[str, str] = {}
    for name, answer in zip(names, answers, strict=True):
        if isinstance(answer, ApiError):
            failed[name] = answer.message
        elif isinstance(answer, BaseException):
            raise answer
        else:
            pages[name] = answer["items"]
    return merge_newest_first(pages, limit), failed


@router.get("/audit-log", include_in_schema=False)
async def audit_log(ctx: PageCtx) -> Response:
    ctx.require("audit")
    q = dict(ctx.request.query_params)
    asked = q.get("service") or ""
    service = asked if asked in SOURCES else "all"
    limit = int(q["limit"]) if q.get("limit") in LIMITS else 50
    params, errors = audit_query(q)
    entries: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
    next_cursor = None
    message = "Check the marked fields." if errors else None
    if not errors and service == "all":
        entries, failed = await _all(ctx, params, limit)
    elif not errors:
        try:
            page = await _query(ctx, service, params, limit, q.get("cursor"))
            entries, next_cursor = page["items"], page.get("next_cursor")
        except ApiError as exc:
            if exc.status >= 500 or exc.status in (401, 403):
                raise
            errors, message = exc.fields or {"form": exc.message}, exc.message
    shown = {k: v for k, v in q.items() if k in (*FILTERS, "service", "limit") and v}
    return ctx.render(
        "audit.html",
        status=422 if errors else 200,
        values=q,
        errors=errors,
        error=message,
        service=service,
        services=list(SOURCES),
        service_options=SERVICE_OPTIONS,
        change_text=change_text,
        limits=LIMITS,
        entries=entries,
        failed=failed,
        next_query=urlencode({**shown, "cursor": next_cursor}) if next_cursor else None,
        export_query={s: urlencode({**shown, "service": s}) for s in SOURCES},
    )


@router.get("/audit-log/export", include_in_schema=False)
async def audit_export(ctx: PageCtx) -> Response:
    """One service's audit log as CSV, streamed from the gateway (same filters as the page)."""
    ctx.require("audit")
    q = dict(ctx.request.query_params)
    service = q.get("service")
    params, errors = audit_query(q)
    if service not in SOURCES or errors:
        words = "; ".join(errors.values()) or "Choose the service whose audit log to export."
        raise ApiError(422, "invalid_export", words)
    upstream = await ctx.api.open_stream(f"{SOURCES[service]}/export", params)

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in upstream.aiter_bytes():
                yield chunk
        finally:
            await upstream.aclose()

    filename = f"audit-{service}-{datetime.now(UTC).date().isoformat()}.csv"
    headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
    media = upstream.headers.get("content-type", "text/csv; charset=utf-8")
    return StreamingResponse(body(), media_type=media, headers=headers)


def change_text(change: dict[str, Any]) -> str:
    """``field: before → after`` for the table (long values cut)."""

    def shown(value: Any) -> str:
        text = charts.NONE if value is None else str(value)
        return text if len(text) <= 80 else text[:79] + "…"

    return f"{change.get('field')}: {shown(change.get('before'))} → {shown(change.get('after'))}"
