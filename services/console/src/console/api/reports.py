"""The analyst's dashboard: funnel, channels and handoff latency, charts beside their numbers."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Response

from console.domain import charts
from console.web import PageCtx

router = APIRouter()
STAGES = ("captured", "qualified", "accepted", "won", "onboarded")
SERIES_DAYS = (7, 30, 90)


def dashboard_charts(summary: dict[str, Any]) -> dict[str, Any]:
    """SVG charts and the rows of numbers shown beside them (pure: unit-tested)."""
    stages = summary["funnel"]["stages"]
    funnel = charts.bar_chart("Customer funnel", [charts.Bar(s, float(stages.get(s, 0))) for s in STAGES])
    channel_rows = sorted(summary["channels"].items(), key=lambda kv: -kv[1].get("captured", 0))
    channels = charts.bar_chart(
        "Leads won per channel", [charts.Bar(name, float(c.get("won", 0))) for name, c in channel_rows]
    )
    latency_rows = []
    for name, stats in sorted(summary["handoffs"].items()):
        for kind in ("transport", "business"):
            s = stats.get(kind)
            if s:
                latency_rows.append({"handoff": name, "kind": kind, **s})
    latency = charts.bar_chart(
        "Handoff latency, p95",
        [
            charts.Bar(f"{r['handoff']} ({r['kind']})", float(r["p95"] or 0), charts.format_seconds(r["p95"]))
            for r in latency_rows
        ],
    )
    return {
        "funnel": funnel,
        "channels": channels,
        "latency": latency,
        "channel_rows": channel_rows,
        "latency_rows": latency_rows,
        "stages": stages,
        "conversion": summary["funnel"]["conversion"],
    }


def series_view(series: dict[str, Any], handoff: str) -> dict[str, Any]:
    """One handoff's latency over time: a column chart of each kind's daily p50 and the rows of
    numbers beside them (one per day with a sample of either kind; pure: unit-tested)."""
    kinds = series["handoffs"].get(handoff) or {"transport": [], "business": None}
    days: dict[str, dict[str, Any]] = {}
    for kind in ("transport", "business"):
        for d in kinds.get(kind) or []:
            days.setdefault(d["day"], {"day": d["day"]})[kind] = d
    chart_of = {
        kind: charts.column_chart(
            f"{handoff}: {kind} latency p50 per day",
            [charts.Bar(d["day"][5:], float(d["p50"] or 0), charts.format_seconds(d["p50"])) for d in points],
        )
        for kind in ("transport", "business")
        if (points := kinds.get(kind)) is not None
    }
    return {
        "rows": [days[k] for k in sorted(days)],
        "charts": chart_of,
        "has_business": kinds.get("business") is not None,
    }


@router.get("/dashboard", include_in_schema=False)
async def dashboard(ctx: PageCtx) -> Response:
    ctx.require("dashboard")
    q = ctx.request.query_params
    raw_days = q.get("days", "")
    days = int(raw_days) if raw_days.isdigit() and int(raw_days) in SERIES_DAYS else 30
    summary, series = await asyncio.gather(
        ctx.api.get("/api/analytics/summary"),
        ctx.api.get("/api/analytics/handoffs/series", {"days": days}),
    )
    names = list(series["handoffs"])
    requested = q.get("handoff") or ""
    handoff = requested if requested in names else (names[0] if names else "")
    return ctx.render(
        "dashboard.html",
        summary=summary,
        stage_names=STAGES,
        series=series_view(series, handoff),
        handoff=handoff,
        handoff_names=names,
        days=days,
        day_choices=SERIES_DAYS,
        **dashboard_charts(summary),
    )
