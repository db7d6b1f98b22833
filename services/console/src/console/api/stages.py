"""The sales manager's stage and required-field configuration (the sales API's ``/pipeline``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from console.api.forms import STAGE_ROWS_BLANK, pipeline_body, pipeline_errors
from console.web import CSRF, Ctx, PageCtx, Refusal, read_form, redirect, submit

router = APIRouter()


def stage_values(pipeline: dict[str, Any]) -> dict[str, str]:
    """The form's values for the stored pipeline: one row per stage, in order."""
    values: dict[str, str] = {}
    for i, stage in enumerate(pipeline["stages"]):
        values[f"stage-{i}.position"] = str(i + 1)
        values[f"stage-{i}.name"] = stage["name"]
        values[f"stage-{i}.probability"] = f"{stage['probability'] * 100:g}"
        values[f"stage-{i}.required_fields"] = ", ".join(stage["required_fields"])
    return values


async def _stages_page(ctx: Ctx, status: int = 200, **extra: Any) -> Response:
    pipeline = await ctx.api.get("/api/sales/pipeline")
    values = extra.pop("values", None) or ctx.draft() or stage_values(pipeline)
    shown = max(len(pipeline["stages"]), int(values.get("rows") or 0)) + STAGE_ROWS_BLANK
    return ctx.render(
        "stages.html", status=status, pipeline=pipeline, values=values, rows=range(shown), **extra
    )


@router.get("/team/stages", include_in_schema=False)
async def stages(ctx: PageCtx) -> Response:
    ctx.require("stages")
    return await _stages_page(ctx)


@router.post("/team/stages", include_in_schema=False, dependencies=CSRF)
async def save_stages(ctx: PageCtx) -> Response:
    """A new pipeline version; the API's refusals are shown on the stage's row."""
    ctx.require("stages")
    form = await read_form(ctx.request)
    rows = min(int(form["rows"]) if form.get("rows", "").isdigit() else 0, 40)
    errors: dict[str, str] = {}
    body, sent_rows = pipeline_body(form, rows, errors)
    if errors:
        refusal = Refusal(422, errors, "Check the marked fields.")
    else:
        saved = await submit(ctx.api.put("/api/sales/pipeline", body))
        if not isinstance(saved, Refusal):
            return redirect("/team/stages", "stages")
        where = pipeline_errors(saved.message or "", saved.errors, body["stages"], sent_rows)
        refusal = Refusal(saved.status, where, saved.message)
    return await _stages_page(ctx, **refusal.page(values=form))
