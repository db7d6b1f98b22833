"""Customer success keeping customers: churn warnings, the health rules, commitment reviews.

- ``/churn-warnings``: the accounts at risk with the signals that raised the warning, and how
  well the warning has predicted churn so far (precision and recall against recorded renewals).
- ``/health-rules``: the versioned health rules; customer success leads save a new version.
- ``/commitment-reviews``: before sales may win a deal whose promises cross a threshold, a CSM
  approves each commitment or flags it with a reason; the verdict goes back to sales.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from console.domain.pages import CSM_LEADS
from console.web import CSRF, Ctx, PageCtx, Refusal, read_form, read_form_multi, redirect, submit

router = APIRouter()
REVIEW_STATES = ("pending", "completed", "superseded")


@router.get("/churn-warnings", include_in_schema=False)
async def churn_warnings(ctx: PageCtx) -> Response:
    ctx.require("churn_warnings")
    warnings = await ctx.api.get("/api/service-desk/churn-warnings")
    hit_rate = await ctx.api.get("/api/service-desk/churn-warnings/hit-rate")
    items = sorted(warnings["items"], key=lambda w: (w["score"], w["account_name"]))
    return ctx.render("churn_warnings.html", warnings=items, hit_rate=hit_rate)


def rules_body(current: dict[str, Any], form: dict[str, str], errors: dict[str, str]) -> dict[str, Any]:
    """The editor's fields as new rules: each a number of the current value's kind (pure)."""
    rules: dict[str, Any] = {}
    for name, old in current.items():
        raw = form.get(name, "").strip().replace(",", "")
        if not raw:
            errors[name] = "Enter a number."
            continue
        try:
            value = float(raw)
        except ValueError:
            errors[name] = f"'{raw}' is not a number."
            continue
        if isinstance(old, int) and not isinstance(old, bool):
            if not value.is_integer():
                errors[name] = "Enter a whole number."
                continue
            rules[name] = int(value)
        else:
            rules[name] = value
    return rules


async def _rules_page(ctx: Ctx, status: int = 200, **extra: Any) -> Response:
    current = await ctx.api.get("/api/service-desk/health/rules")
    return ctx.render(
        "health_rules.html",
        status=status,
        ruleset=current,
        can_write=ctx.has(CSM_LEADS),
        values=extra.pop("values", None) or ctx.draft() or {k: str(v) for k, v in current["rules"].items()},
        **extra,
    )


@router.get("/health-rules", include_in_schema=False)
async def health_rules(ctx: PageCtx) -> Response:
    ctx.require("health_rules")
    return await _rules_page(ctx)


@router.post("/health-rules", include_in_schema=False, dependencies=CSRF)
async def save_health_rules(ctx: PageCtx) -> Response:
    ctx.require("health_rules")
    form = await read_form(ctx.request)
    current = await ctx.api.get("/api/service-desk/health/rules")
    errors: dict[str, str] = {}
    body = rules_body(current["rules"], form, errors)
    answer = (
        Refusal(422, errors, "Check the marked fields.")
        if errors
        else await submit(ctx.api.put("/api/service-desk/health/rules", body))
    )
    if isinstance(answer, Refusal):
        return await _rules_page(ctx, **answer.page(values=form))
    return redirect("/health-rules", "health_rules")


@router.post("/health-rules/recompute", include_in_schema=False, dependencies=CSRF)
async def recompute(ctx: PageCtx) -> Response:
    """Score every active account of the user's book again (after saving new rules)."""
    ctx.require("health_rules")
    answer = await submit(ctx.api.post("/api/service-desk/health/recompute"))
    if isinstance(answer, Refusal):
        return await _rules_page(ctx, **answer.page())
    return redirect(f"/health-rules?rescored={int(answer['accounts'])}", "rescored")


async def _reviews_page(ctx: Ctx, status: int = 200, **extra: Any) -> Response:
    asked = ctx.request.query_params.get("status") or ""
    state = asked if asked in REVIEW_STATES else "pending"
    reviews = await ctx.api.get("/api/service-desk/commitment-reviews", {"status": state})
    return ctx.render(
        "reviews.html",
        status=status,
        reviews=reviews["items"],
        state=state,
        states=REVIEW_STATES,
        values=extra.pop("values", None) or {},
        **extra,
    )


@router.get("/commitment-reviews", include_in_schema=False)
async def commitment_reviews(ctx: PageCtx) -> Response:
    ctx.require("reviews")
    return await _reviews_page(ctx)


def verdict_body(
    commitment_ids: list[str], form: dict[str, list[str]], errors: dict[str, str]
) -> dict[str, Any]:
    """One decision per commitment: ``decision.<id>`` approved / flagged, ``reason.<id>`` (pure)."""
    decisions = []
    for cid in commitment_ids:
        decision = (form.get(f"decision.{cid}") or [""])[0]
        reason = (form.get(f"reason.{cid}") or [""])[0].strip()
        if decision not in ("approved", "flagged"):
            errors[f"decision.{cid}"] = "Approve it or flag it."
        elif decision == "flagged" and not reason:
            errors[f"reason.{cid}"] = "Say why sales should not promise this."
        decisions.append({"commitment_id": cid, "decision": decision, "reason": reason or None})
    return {"decisions": decisions}


@router.post("/commitment-reviews/{review_id}", include_in_schema=False, dependencies=CSRF)
async def decide_review(ctx: PageCtx, review_id: str) -> Response:
    ctx.require("reviews")
    form = await read_form_multi(ctx.request)
    review = await ctx.api.get(f"/api/service-desk/commitment-reviews/{review_id}")
    errors: dict[str, str] = {}
    body = verdict_body([c["commitment_id"] for c in review["commitments"]], form, errors)
    path = f"/api/service-desk/commitment-reviews/{review_id}/verdict"
    answer = (
        Refusal(422, errors, "Decide on every commitment.")
        if errors
        else await submit(ctx.api.post(path, body))
    )
    if isinstance(answer, Refusal):
        values = {k: v[0] for k, v in form.items()} | {"review_id": review_id}
        return await _reviews_page(ctx, **answer.page(values=values, prefix=f"{review_id}."))
    return redirect("/commitment-reviews", "review")
