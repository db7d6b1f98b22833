"""KPI pages: every KPI (analysts, executives), customer service/success's, marketing's figures.

Each page reads one of analytics' KPI routes (``/kpis``, ``/kpis/service``, ``/kpis/marketing``)
and shows every figure twice: an SVG chart and the numbers in a table beside it. The views
below are pure (the API's JSON in, rows and charts out) and unit-tested.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from console.domain import charts
from console.web import PageCtx

router = APIRouter()
PERIOD_KINDS = ("week", "month", "quarter")
WINDOWS = ("last_hour", "last_day", "last_30_days")
LEAD_COLUMNS = ("captured", "qualified", "accepted", "rejected", "recycled")


def _team(period: dict[str, Any], team: str) -> dict[str, Any]:
    teams = period.get("teams") or {}
    found: dict[str, Any] = teams.get(team) or teams.get("all") or {}
    return found


def _get(figures: dict[str, Any], *path: str) -> Any:
    value: Any = figures
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _retention(figures: dict[str, Any]) -> float | None:
    """Net revenue retention of the period's main currency (the largest value up for renewal)."""
    per_currency = _get(figures, "renewals", "revenue_retention") or {}
    if not per_currency:
        return None
    main = max(per_currency.values(), key=lambda r: float(r.get("previous") or 0))
    value = main.get("net_retention")
    return None if value is None else float(value)


def period_rows(periods: list[dict[str, Any]], team: str) -> list[dict[str, Any]]:
    """One row per period, oldest first (the API answers newest first), for the chosen team."""
    rows = []
    for period in reversed(periods):
        f = _team(period, team)
        rows.append(
            {
                "period": period.get("period", ""),
                "opened": _get(f, "tickets", "opened"),
                "resolved": _get(f, "tickets", "resolved"),
                "sla_attainment": _get(f, "tickets", "sla_attainment"),
                "csat": _get(f, "csat", "average"),
                "csat_responses": _get(f, "csat", "responses"),
                "nps": _get(f, "nps", "score"),
                "renewal_rate": _get(f, "renewals", "renewal_rate"),
                "logo_churn": _get(f, "renewals", "logo_churn"),
                "net_retention": _retention(f),
                "checkin_coverage": _get(f, "checkins", "coverage"),
            }
        )
    return rows


def _ratio_bars(rows: list[dict[str, Any]], key: str) -> list[charts.Bar]:
    return [charts.Bar(r["period"], float(r[key] or 0) * 100, charts.format_percent(r[key])) for r in rows]


def period_charts(rows: list[dict[str, Any]]) -> dict[str, str]:
    """The period figures over time: one chart per measure, a bar per period."""
    return {
        "tickets": charts.column_chart(
            "Tickets resolved per period", [charts.Bar(r["period"], float(r["resolved"] or 0)) for r in rows]
        ),
        "sla": charts.column_chart("SLA attainment per period", _ratio_bars(rows, "sla_attainment")),
        "csat": charts.column_chart(
            "CSAT average (1-5) per period",
            [
                charts.Bar(r["period"], float(r["csat"] or 0), charts.format_number(r["csat"], 2))
                for r in rows
            ],
        ),
        "retention": charts.column_chart(
            "Net revenue retention per period", _ratio_bars(rows, "net_retention")
        ),
        "coverage": charts.column_chart(
            "Check-in coverage per period", _ratio_bars(rows, "checkin_coverage")
        ),
    }


def latency_rows(latency: dict[str, Any]) -> list[dict[str, Any]]:
    """Business latency (handed off -> first human action): a row per handoff and window.

    The handoff's items still waiting (and the oldest one's age) are on its first row.
    """
    rows = []
    for handoff, stats in sorted(latency.items()):
        windows = stats.get("windows") or {}
        shown = [w for w in WINDOWS if windows.get(w)]
        for i, window in enumerate(shown):
            first = i == 0
            rows.append(
                {
                    "handoff": handoff if first else "",
                    "window": window.replace("_", " "),
                    **windows[window],
                    "pending": stats.get("pending") if first else None,
                    "oldest": stats.get("oldest_pending_seconds") if first else None,
                }
            )
    return rows


def latency_chart(latency: dict[str, Any]) -> str:
    bars = []
    for handoff, stats in sorted(latency.items()):
        day = (stats.get("windows") or {}).get("last_day") or {}
        p90 = day.get("p90")
        bars.append(charts.Bar(handoff, float(p90 or 0), charts.format_seconds(p90)))
    return charts.bar_chart("Business latency, p90 over the last day", bars)


def items_chart(items: dict[str, Any]) -> str:
    bars = [charts.Bar(dept, float(v.get("open") or 0)) for dept, v in sorted(items.items())]
    return charts.bar_chart("Open action items per department", bars)


def lead_rows(figures: dict[str, Any]) -> list[dict[str, Any]]:
    """Channels or campaigns, most captured first, with sales' verdict reasons most frequent first."""
    rows = []
    for name, f in sorted(figures.items(), key=lambda kv: (-int(kv[1].get("captured") or 0), kv[0])):
        reasons = sorted((f.get("verdict_reasons") or {}).items(), key=lambda kv: (-kv[1], kv[0]))
        rows.append({"name": name, **f, "reasons": reasons})
    return rows


def marketing_charts(marketing: dict[str, Any]) -> dict[str, str]:
    channels = lead_rows(marketing.get("channels") or {})
    campaigns = lead_rows(marketing.get("campaigns") or {})
    return {
        "channels": charts.bar_chart("Sales' acceptance rate per channel", _acceptance_bars(channels)),
        "campaigns": charts.bar_chart("Sales' acceptance rate per campaign", _acceptance_bars(campaigns)),
    }


def _acceptance_bars(rows: list[dict[str, Any]]) -> list[charts.Bar]:
    return [
        charts.Bar(
            r["name"],
            float(r.get("acceptance_rate") or 0) * 100,
            charts.format_percent(r.get("acceptance_rate")),
        )
        for r in rows
    ]


def _choices(ctx: PageCtx) -> tuple[str, str]:
    q = ctx.request.query_params
    asked = q.get("period") or ""
    period = asked if asked in PERIOD_KINDS else "month"
    return period, (q.get("team") or "").strip()[:100]


def _period_view(data: dict[str, Any], team: str) -> dict[str, Any]:
    periods = data.get("periods") or []
    rows = period_rows(periods, team or "all")
    teams = sorted({t for p in periods for t in (p.get("teams") or {})} - {"all"})
    return {"rows": rows, "period_charts": period_charts(rows), "teams": teams}


@router.get("/kpis", include_in_schema=False)
async def every_kpi(ctx: PageCtx) -> Response:
    ctx.require("kpis")
    period, team = _choices(ctx)
    data = await ctx.api.get("/api/analytics/kpis", {"period": period, "team": team or None})
    latency = data.get("business_latency") or {}
    items = data.get("action_items") or {}
    marketing = data.get("marketing") or {}
    return ctx.render(
        "kpis.html",
        data=data,
        period=period,
        team=team,
        period_kinds=PERIOD_KINDS,
        latency_rows=latency_rows(latency),
        latency_chart=latency_chart(latency),
        items=sorted(items.items()),
        items_chart=items_chart(items),
        channel_rows=lead_rows(marketing.get("channels") or {}),
        marketing_charts=marketing_charts(marketing),
        **_period_view(data, team),
    )


@router.get("/kpis/service", include_in_schema=False)
async def service_kpis(ctx: PageCtx) -> Response:
    ctx.require("service_kpis")
    period, team = _choices(ctx)
    data = await ctx.api.get("/api/analytics/kpis/service", {"period": period, "team": team or None})
    latency = data.get("business_latency") or {}
    return ctx.render(
        "kpis_service.html",
        data=data,
        period=period,
        team=team,
        period_kinds=PERIOD_KINDS,
        latency_rows=latency_rows(latency),
        latency_chart=latency_chart(latency),
        own_items=data.get("action_items") or {},
        **_period_view(data, team),
    )


@router.get("/kpis/marketing", include_in_schema=False)
async def marketing_kpis(ctx: PageCtx) -> Response:
    ctx.require("marketing_kpis")
    data = await ctx.api.get("/api/analytics/kpis/marketing")
    marketing = data.get("marketing") or {}
    latency = data.get("business_latency") or {}
    return ctx.render(
        "kpis_marketing.html",
        data=data,
        channel_rows=lead_rows(marketing.get("channels") or {}),
        campaign_rows=lead_rows(marketing.get("campaigns") or {}),
        marketing_charts=marketing_charts(marketing),
        latency_rows=latency_rows(latency),
        own_items=data.get("action_items") or {},
    )
