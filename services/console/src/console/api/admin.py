"""The administrator: users, their roles and activation (the gateway's /users API)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from console.api.forms import text
from console.domain.pages import ROLE_LABELS, ROLES
from console.web import CSRF, Ctx, PageCtx, Refusal, read_form, read_form_multi, redirect, submit

router = APIRouter()


async def _users_page(ctx: Ctx, status: int = 200, **extra: Any) -> Response:
    users = await ctx.api.get("/users", {"limit": 500})
    return ctx.render(
        "users.html",
        status=status,
        users=users["items"],
        total=users["total"],
        roles=ROLES,
        labels=ROLE_LABELS,
        values=extra.pop("values", None) or ctx.draft() or {},
        **extra,
    )


@router.get("/admin/users", include_in_schema=False)
async def users(ctx: PageCtx) -> Response:
    ctx.require("users")
    return await _users_page(ctx)


@router.post("/admin/users", include_in_schema=False, dependencies=CSRF)
async def create_user(ctx: PageCtx) -> Response:
    ctx.require("users")
    form = await read_form(ctx.request)
    roles = (await read_form_multi(ctx.request)).get("roles", [])
    body = {
        "username": form.get("username", "").strip(),
        "password": form.get("password", ""),
        "roles": roles,
        "display_name": text(form, "display_name"),
    }
    created = await submit(ctx.api.post("/users", body), by_status={409: "username"})
    if isinstance(created, Refusal):
        return await _users_page(ctx, **created.page(values=form))
    return redirect("/admin/users", "user")


@router.post("/admin/users/{user_id}", include_in_schema=False, dependencies=CSRF)
async def update_user(ctx: PageCtx, user_id: str) -> Response:
    ctx.require("users")
    form = await read_form(ctx.request)
    body: dict[str, Any] = {}
    if "active" in form:
        body["active"] = form["active"] == "true"
    if form.get("set_roles"):
        body["roles"] = (await read_form_multi(ctx.request)).get("roles", [])
    changed = await submit(ctx.api.patch(f"/users/{user_id}", body))
    if isinstance(changed, Refusal):
        # One row's buttons: the refusal is shown on that row.
        return await _users_page(ctx, **changed.at("form").page(prefix=f"{user_id}."))
    return redirect("/admin/users", "user")
