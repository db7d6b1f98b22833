"""Marketing: capture, the lead list, a lead's page, scoring rules."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from console.api.forms import number, text
from console.domain import charts
from console.domain.pages import MARKETERS
from console.web import CSRF, PageCtx, Refusal, read_form, redirect, submit

router = APIRouter()
STATUSES = ("new", "nurturing", "qualified", "accepted", "rejected", "recycled")
CHANNELS = ("web_form", "webinar", "partner_api", "import", "email", "event", "ads", "referral")
BEHAVIOURS = ("page_view", "email_open", "form_submit", "trial_signup")
# The leads API's orders (each on an index): name ascending, created for newest and oldest.
SORTS = ("newest", "oldest", "updated", "score", "name")
LIST_FILTERS = ("status", "channel", "campaign", "min_score", "max_score", "owner")


def list_params(q: dict[str, str]) -> dict[str, str | None]:
    """The console's lead-list query as the leads API's ``GET /leads`` parameters.

    Every filter, the text search (``search`` -> ``q``: words of the name, email or company, or
    a whole email), the order and the cursor go to the API, which searches, filters, sorts and
    pages over every stored lead on its indexes; nothing is filtered here.
    """
    params: dict[str, str | None] = {name: (q.get(name) or "").strip() or None for name in LIST_FILTERS}
    params["q"] = (q.get("search") or "").strip() or None
    params["sort"] = q.get("sort") if q.get("sort") in SORTS else "newest"
    params["limit"] = q.get("limit") if q.get("limit") in ("25", "50", "100", "200") else "50"
    params["cursor"] = q.get("cursor") or None
    return params


@router.get("/leads", include_in_schema=False)
async def lead_list(ctx: PageCtx) -> Response:
    ctx.require("leads")
    q = dict(ctx.request.query_params)
    params = list_params(q)
    page = await submit(ctx.api.get("/api/leads/leads", params), field="search")
    refusal = page if isinstance(page, Refusal) else None
    found = {"items": [], "next_cursor": None} if isinstance(page, Refusal) else page
    template = "leads_rows.html" if ctx.request.headers.get("hx-request") else "leads.html"
    first_query = {k: v for k, v in q.items() if k not in ("cursor", "ok")}
    return ctx.render(
        template,
        **(refusal.page() if refusal else {}),
        leads=found["items"],
        q=q,
        sort=params["sort"],
        sorts=SORTS,
        limit=params["limit"],
        statuses=STATUSES,
        channels=CHANNELS,
        next_cursor=found.get("next_cursor"),
        first_query=first_query,
        next_query=first_query | {"cursor": found.get("next_cursor")},
        first_page=not params["cursor"],
    )


@router.get("/leads/new", include_in_schema=False)
async def capture_page(ctx: PageCtx) -> Response:
    ctx.require("capture")
    return ctx.render("capture.html", values=ctx.draft() or {"consent": ""}, channels=CHANNELS)


@router.post("/leads/new", include_in_schema=False, dependencies=CSRF)
async def capture(ctx: PageCtx) -> Response:
    ctx.require("capture")
    form = await read_form(ctx.request)
    body = {
        "name": form.get("name", "").strip(),
        "email": form.get("email", "").strip(),
        "company": text(form, "company"),
        "source_channel": form.get("source_channel", "").strip(),
        "campaign": text(form, "campaign"),
        "consent": {"marketing_email": form.get("consent") == "yes"},
    }
    out = await submit(ctx.api.post("/api/leads/leads", body))
    if isinstance(out, Refusal):
        return ctx.render("capture.html", **out.page(values=form), channels=CHANNELS)
    return redirect(f"/leads/{out['lead']['id']}", "merged" if out.get("merged") else "captured")


async def _lead_page(ctx: PageCtx, lead_id: str, **extra: Any) -> Response:
    lead = await ctx.api.get(f"/api/leads/leads/{lead_id}")
    behaviours = await ctx.api.get(f"/api/leads/leads/{lead_id}/behaviours")
    reasons = [
        charts.Bar(r["behaviour"].replace("_", " "), float(r["points"]), charts.format_number(r["points"], 1))
        for r in lead.get("score_reasons", [])
    ]
    chart = charts.bar_chart(f"Score {lead['score']} by behaviour", reasons, unit=" pts")
    return ctx.render(
        "lead.html",
        lead=lead,
        behaviours=behaviours["items"],
        chart=chart,
        behaviour_kinds=BEHAVIOURS,
        can_write=ctx.has(MARKETERS),
        **extra,
    )


@router.get("/leads/{lead_id}", include_in_schema=False)
async def lead_page(ctx: PageCtx, lead_id: str) -> Response:
    ctx.require("lead")
    return await _lead_page(ctx, lead_id)


@router.post("/leads/{lead_id}/behaviours", include_in_schema=False, dependencies=CSRF)
async def record_behaviour(ctx: PageCtx, lead_id: str) -> Response:
    ctx.require("capture")
    form = await read_form(ctx.request)
    body = {"behaviour": form.get("behaviour", ""), "external_id": text(form, "external_id")}
    answer = await submit(ctx.api.post(f"/api/leads/leads/{lead_id}/behaviours", body), field="behaviour")
    if isinstance(answer, Refusal):
        page = answer.page()
        return await _lead_page(ctx, lead_id, errors=page["errors"], error=page["error"])
    return redirect(f"/leads/{lead_id}", "behaviour")


async def _scoring_page(ctx: PageCtx, status: int = 200, **extra: Any) -> Response:
    rules = await ctx.api.get("/api/leads/scoring-rules")
    history = await ctx.api.get("/api/leads/scoring-rules/history", {"limit": 20})
    return ctx.render(
        "scoring.html",
        status=status,
        rules=rules,
        history=history["items"],
        behaviours=BEHAVIOURS,
        can_write=ctx.has(MARKETERS),
        **extra,
    )


@router.get("/scoring", include_in_schema=False)
async def scoring(ctx: PageCtx) -> Response:
    ctx.require("scoring")
    return await _scoring_page(ctx, values=ctx.draft() or {})


def rules_body(form: dict[str, str], errors: dict[str, str]) -> dict[str, Any]:
    """The rules editor's fields as the leads API's rules body (weights, caps, threshold)."""
    rules: dict[str, Any] = {}
    for kind in BEHAVIOURS:
        weight = number(form, f"{kind}.weight", errors, required=True)
        cap = number(form, f"{kind}.cap", errors)
        rules[kind] = {"weight": weight, "cap": int(cap) if cap is not None else None}
    return {"rules": rules, "threshold": number(form, "threshold", errors, required=True)}


def _on_rows(refusal: Refusal) -> Refusal:
    """The API names a rule's field ``rules.<behaviour>.<weight|cap>``; the editor's row is
    ``<behaviour>.<weight|cap>``."""
    errors = {k.removeprefix("rules."): v for k, v in refusal.errors.items()}
    return Refusal(refusal.status, errors, refusal.message)


@router.post("/scoring", include_in_schema=False, dependencies=CSRF)
async def save_scoring(ctx: PageCtx) -> Response:
    ctx.require("scoring")
    form = await read_form(ctx.request)
    errors: dict[str, str] = {}
    body = rules_body(form, errors)
    version = number(form, "expected_version", errors)
    if errors:
        return await _scoring_page(ctx, **Refusal(422, errors, "Check the marked fields.").page(values=form))
    body |= {"note": text(form, "note"), "expected_version": int(version) if version is not None else None}
    saved = await submit(ctx.api.put("/api/leads/scoring-rules", body))
    if isinstance(saved, Refusal):
        return await _scoring_page(ctx, **_on_rows(saved).page(values=form))
    return redirect("/scoring", "rules")


@router.post("/scoring/preview", include_in_schema=False, dependencies=CSRF)
async def preview_scoring(ctx: PageCtx) -> Response:
    """How many leads the rules as typed would qualify, before saving them (nothing is saved):
    the page comes back with what was typed and the leads API's preview beside it."""
    ctx.require("scoring")
    form = await read_form(ctx.request)
    errors: dict[str, str] = {}
    body = rules_body(form, errors)
    if errors:
        return await _scoring_page(ctx, **Refusal(422, errors, "Check the marked fields.").page(values=form))
    preview = await submit(ctx.api.post("/api/leads/scoring-rules/preview", body))
    if isinstance(preview, Refusal):
        return await _scoring_page(ctx, **_on_rows(preview).page(values=form))
    return await _scoring_page(ctx, values=form, preview=preview)
