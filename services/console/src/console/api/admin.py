"""The administrator: users, their roles and activation (the gateway's /users API)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from console.api.forms import text
from console.api_client import ApiError
from console.domain.pages import ROLE_LABELS, ROLES
from console.web import CSRF, Ctx, PageCtx, read_form, read_form_multi, redirect

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
    try:
        await ctx.api.post("/users", body)
    except ApiError as exc:
        errors = exc.fields or {"username" if exc.status == 409 else "form": exc.message}
        return await _users_page(ctx, status=exc.status, values=form, errors=errors, error=exc.message)
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
    try:
        await ctx.api.patch(f"/users/{user_id}", body)
    except ApiError as exc:
        return await _users_page(
            ctx, status=exc.status, errors={f"{user_id}.form": exc.message}, error=exc.message
        )
    return redirect("/admin/users", "user")
