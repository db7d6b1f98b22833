"""Login, logout and the first page of each role."""

from __future__ import annotations

import httpx
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import RedirectResponse

from console.api_client import Gateway
from console.domain import pages
from console.session import safe_next
from console.web import (
    CSRF,
    NOTICES,
    PageCtx,
    Refusal,
    load_session,
    read_form,
    redirect,
    render,
    submit,
    verify_csrf,
)

router = APIRouter()


@router.get("/", include_in_schema=False)
async def root(request: Request) -> Response:
    session = load_session(request)
    if session is None:
        return RedirectResponse("/login", status_code=303)
    return RedirectResponse(pages.home(session.roles), status_code=303)


@router.get("/login", include_in_schema=False)
async def login_page(request: Request) -> Response:
    expired = request.query_params.get("expired") == "1"
    message = (
        "Your session has expired. Log in again: what you typed is kept and shown again afterwards."
        if expired
        else NOTICES.get(request.query_params.get("ok", ""))
    )
    return render(
        request, "login.html", next=safe_next(request.query_params.get("next"), ""), login_message=message
    )


@router.post("/login", include_in_schema=False, dependencies=CSRF)
async def login(request: Request) -> Response:
    form = await read_form(request)
    username, password = form.get("username", "").strip(), form.get("password", "")
    target = safe_next(form.get("next"), "")
    errors: dict[str, str] = {}
    if not username:
        errors["username"] = "Enter your username."
    if not password:
        errors["password"] = "Enter your password."
    gateway: Gateway = request.app.state.gateway
    if not errors:
        session = await submit(gateway.login(username, password), by_status={401: "password"})
        if isinstance(session, Refusal):
            errors.update(session.errors)
        else:
            request.state.session_out = session
            if target and request.cookies.get("crm_draft"):
                return redirect(target, "restored")
            return redirect(target or pages.home(session.roles))
    return render(
        request,
        "login.html",
        status=401 if "password" in errors else 422,
        next=target,
        values={"username": username},
        errors=errors,
    )


@router.post("/logout", include_in_schema=False, dependencies=[Depends(verify_csrf)])
async def logout(request: Request) -> Response:
    session = load_session(request)
    if session is not None:
        gateway: Gateway = request.app.state.gateway
        try:
            await gateway.logout(session)  # revokes the access token and ends the refresh session
        except httpx.TransportError:
            pass  # the cookie goes anyway; the tokens expire on their own
    request.state.session_out = False
    return redirect("/login", "loggedout")


@router.get("/me", include_in_schema=False)
async def me(ctx: PageCtx) -> Response:
    return ctx.render("me.html")
