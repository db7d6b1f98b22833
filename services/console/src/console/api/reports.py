"""The analyst's dashboard: funnel, channels and handoff latency, charts beside their numbers."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from console.domain import charts
from console.web import PageCtx

router = APIRouter()
STAGES = ("captured", "qualified", "accepted", "won", "onboarded")


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


@router.get("/dashboard", include_in_schema=False)
async def dashboard(ctx: PageCtx) -> Response:
    ctx.require("dashboard")
    summary = await ctx.api.get("/api/analytics/summary")
    return ctx.render("dashboard.html", summary=summary, stage_names=STAGES, **dashboard_charts(summary))
