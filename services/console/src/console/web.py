"""The request side of every page: the session, CSRF, forms, rendering, errors.

Routers depend on :func:`page` (a signed-in user, or a redirect to the login
page) and on :func:`verify_csrf` (every POST carries the form token). Handlers
raise; the handlers installed by :func:`install` turn that into pages: an
expired session into a login that keeps what the user typed, a refused CSRF
token or role into a 403 in words, an API error into its message.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import parse_qs, urlencode

from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from console.api_client import ApiError, Gateway, SessionExpired, UserApi
from console.domain import charts, pages, timing
from console.session import (
    CSRF_COOKIE,
    CSRF_FIELD,
    CSRF_HEADER,
    DRAFT_COOKIE,
    DRAFT_SECONDS,
    SESSION_COOKIE,
    Sealer,
    Session,
    new_csrf_value,
    safe_next,
)
from console.settings import ConsoleSettings

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
TEMPLATES.env.globals.update(
    countdown=timing.countdown,
    short_time=timing.short_time,
    fmt=charts.format_number,
    fmt_seconds=charts.format_seconds,
    fmt_percent=charts.format_percent,
    role_labels=pages.ROLE_LABELS,
    # One id per rendered form: a form sent twice (double click, retry) records one occurrence.
    new_id=lambda: f"console-{uuid.uuid4().hex}",
)
PAGE_FIELD = "_page"  # the page a form sits on: where to come back after a login
NOTICES = {
    "captured": "Lead captured.",
    "merged": "This email was already known: the capture was merged into the existing lead.",
    "behaviour": "Behaviour recorded.",
    "rules": "Scoring rules saved as a new version.",
    "accepted": "Lead accepted: its opportunity is on your board.",
    "rejected": "Lead rejected; marketing sees the reason.",
    "recycled": "Lead sent back to marketing for nurturing.",
    "assigned": "Lead reassigned.",
    "moved": "Deal moved.",
    "activity": "Activity logged.",
    "roster": "Roster saved.",
    "sla": "Response SLA saved.",
    "stages": "Stages saved as a new pipeline version: deals move by the new stages from now on.",
    "ticket": "Ticket opened.",
    "progress": "Progress noted.",
    "resolved": "Ticket resolved.",
    "checklist": "Checklist item completed.",
    "delivered": "Commitment marked delivered.",
    "flagged": "Commitment flagged back to sales.",
    "signal": "Handed to sales.",
    "renewal": "Renewal outcome recorded.",
    "checkin": "Check-in logged; the account's health is scored again.",
    "user": "User saved.",
    "item_accept": "Action item accepted; customer success sees it.",
    "item_complete": "Action item done; customer success sees what was done.",
    "item_decline": "Action item declined; customer success sees why.",
    "item_assign": "Action item assigned.",
    "raised": "Action item raised with the department that owns the fix.",
    "health_rules": "Health rules saved as a new version.",
    "rescored": "Accounts scored again with the current rules.",
    "review": "Verdict sent to sales.",
    "review_requested": "Customer success is asked to review the commitments.",
    "loggedout": "You are logged out.",
    "restored": "Your session had expired. What you typed is back in the form: check it and send it again.",
}


T = TypeVar("T")


@dataclass(frozen=True)
class Refusal:
    """The API (or the form's own check) refused a form: what the page shows, in words."""

    status: int
    errors: dict[str, str]  # field -> message, shown next to the field
    message: str | None  # shown above the form

    def at(self, name: str) -> Refusal:
        """The refusal shown next to the one field ``name`` (a form with one input, or a row's)."""
        return Refusal(self.status, {name: self.errors.get(name) or self.message or "refused"}, self.message)

    def page(self, *, values: dict[str, str] | None = None, prefix: str = "") -> dict[str, Any]:
        """The form page's arguments: status, errors (keyed ``prefix`` + field), message, values."""
        return {
            "status": self.status if 400 <= self.status < 500 else 502,
            "errors": {f"{prefix}{k}": v for k, v in self.errors.items()},
            "error": self.message,
            "values": values,
        }


async def submit(
    call: Awaitable[T], *, field: str = "form", by_status: Mapping[int, str] | None = None
) -> T | Refusal:
    """The API's answer to a form, or its refusal with the errors per field.

    The one place forms catch :class:`ApiError`: a refusal without fields is shown next to
    ``field`` (the form as a whole by default), or next to ``by_status[status]`` (a 409 on a
    username is about the username). An expired session still sends the user to log in
    (:class:`SessionExpired` is not caught).
    """
    try:
        return await call
    except ApiError as exc:
        where = (by_status or {}).get(exc.status, field)
        return Refusal(exc.status, exc.fields or {where: exc.message}, exc.message)


class LoginRequired(Exception):
    """No session cookie, or one that is no longer valid."""


class CsrfRefused(Exception):
    pass


class PageForbidden(Exception):
    def __init__(self, title: str, needed: frozenset[str], roles: frozenset[str]):
        self.title, self.needed, self.roles = title, needed, roles


@dataclass
class Ctx:
    """One page request of a signed-in user."""

    request: Request
    session: Session
    api: UserApi
    settings: ConsoleSettings
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def roles(self) -> frozenset[str]:
        return self.session.roles

    def has(self, roles: frozenset[str]) -> bool:
        return self.session.has_any(roles)

    def require(self, key: str) -> None:
        page = pages.BY_KEY[key]
        if not self.has(page.roles):
            raise PageForbidden(page.title, page.roles, self.roles)

    def render(self, template: str, *, status: int = 200, **values: Any) -> HTMLResponse:
        return render(self.request, template, status=status, session=self.session, **values)

    def draft(self, path: str | None = None) -> dict[str, str] | None:
        """What the user typed on this page before their session expired (once)."""
        return take_draft(self.request, path or self.request.url.path)


def sealer(request: Request) -> Sealer:
    return request.app.state.sealer


def csrf_value(request: Request) -> str:
    value = getattr(request.state, "csrf_value", None) or request.cookies.get(CSRF_COOKIE)
    if not value:
        value = new_csrf_value()
        request.state.csrf_value = value
    return value


def render(
    request: Request, template: str, *, status: int = 200, session: Session | None = None, **values: Any
) -> HTMLResponse:
    notice = NOTICES.get(request.query_params.get("ok", ""))
    # ``error``: the page's message at the top (``error`` is also the field-error macro's name).
    values["page_error"] = values.pop("error", None)
    if values.get("values") is None:
        values.pop("values", None)  # no form values (a refusal's page without a form): none shown
    context = {
        "user": session,
        "menu": pages.menu(session.roles) if session else [],
        "csrf_token": sealer(request).csrf_token(csrf_value(request)),
        "csrf_field": CSRF_FIELD,
        "page_field": PAGE_FIELD,
        "here": request.url.path,
        "notice": notice,
        "values": {},
        "errors": {},
        **values,
    }
    return TEMPLATES.TemplateResponse(request, template, context, status_code=status)


async def read_form(request: Request) -> dict[str, str]:
    """The urlencoded form of a POST (first value of each name), kept on the request."""
    cached = getattr(request.state, "form", None)
    if cached is not None:
        return cached
    multi = await read_form_multi(request)
    form = {k: v[0] for k, v in multi.items()}
    request.state.form = form
    return form


async def read_form_multi(request: Request) -> dict[str, list[str]]:
    cached = getattr(request.state, "form_multi", None)
    if cached is not None:
        return cached
    body = await request.body()
    try:
        multi = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=500)
    except (UnicodeDecodeError, ValueError):
        multi = {}
    request.state.form_multi = multi
    return multi


async def verify_csrf(request: Request) -> None:
    """Every state-changing request carries the form token (or the htmx header) for its cookie."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    submitted = request.headers.get(CSRF_HEADER) or (await read_form(request)).get(CSRF_FIELD)
    if not sealer(request).csrf_valid(request.cookies.get(CSRF_COOKIE), submitted):
        raise CsrfRefused()


def load_session(request: Request) -> Session | None:
    settings: ConsoleSettings = request.app.state.settings
    doc = sealer(request).open(request.cookies.get(SESSION_COOKIE), settings.session_hours * 3600)
    return Session.from_doc(doc) if doc else None


async def page(request: Request) -> Ctx:
    session = load_session(request)
    if session is None:
        raise LoginRequired()
    request.state.session = session
    settings: ConsoleSettings = request.app.state.settings
    gateway: Gateway = request.app.state.gateway
    api = gateway.for_user(session, request.headers.get("x-request-id"), settings.refresh_margin_seconds)
    return Ctx(request, session, api, settings)


PageCtx = Annotated[Ctx, Depends(page)]
CSRF = [Depends(verify_csrf)]


def redirect(path: str, notice: str | None = None) -> RedirectResponse:
    target = f"{path}{'&' if '?' in path else '?'}ok={notice}" if notice else path
    return RedirectResponse(target, status_code=303)


def take_draft(request: Request, path: str) -> dict[str, str] | None:
    doc = sealer(request).open(request.cookies.get(DRAFT_COOKIE), DRAFT_SECONDS)
    if not doc or doc.get("path") != path or not isinstance(doc.get("form"), dict):
        return None
    request.state.clear_draft = True
    return {str(k): str(v) for k, v in doc["form"].items()}


def _login_redirect(request: Request) -> Response:
    """To the login page, back here afterwards; a form's typed values are kept as a draft."""
    form: dict[str, str] | None = getattr(request.state, "form", None)
    back = request.url.path if request.method == "GET" else safe_next((form or {}).get(PAGE_FIELD), "/")
    if request.method == "GET" and request.url.query:
        back = f"{back}?{request.url.query}"
    query = {"next": back}
    draft = None
    if request.method != "GET" and form:
        kept = {k: v for k, v in form.items() if k not in (CSRF_FIELD, PAGE_FIELD, "password")}
        draft = sealer(request).seal({"path": back.split("?")[0], "form": kept, "at": time.time()})
        query["expired"] = "1"
    target = f"/login?{urlencode(query)}"
    response: Response
    if request.headers.get("hx-request"):
        response = Response(status_code=204, headers={"HX-Redirect": target})
    else:
        response = RedirectResponse(target, status_code=303)
    request.state.session_out = False
    if draft:
        settings: ConsoleSettings = request.app.state.settings
        response.set_cookie(
            DRAFT_COOKIE,
            draft,
            max_age=DRAFT_SECONDS,
            httponly=True,
            samesite="lax",
            secure=settings.secure_cookies,
        )
    return response


async def _login(request: Request, _: LoginRequired) -> Response:
    return _login_redirect(request)


async def _expired(request: Request, _: SessionExpired) -> Response:
    return _login_redirect(request)


async def _csrf(request: Request, _: CsrfRefused) -> Response:
    message = (
        "This form was not sent from a page of this console, or it is too old. "
        "Reload the page and send it again."
    )
    return render(
        request,
        "error.html",
        status=403,
        session=load_session(request),
        title="Form refused",
        message=message,
    )


async def _forbidden(request: Request, exc: PageForbidden) -> Response:
    message = (
        f"{exc.title} is for the roles: {pages.describe_roles(exc.needed)}. "
        f"You are signed in as: {pages.describe_roles(exc.roles)}."
    )
    return render(
        request,
        "error.html",
        status=403,
        session=load_session(request),
        title="Not for your role",
        message=message,
    )


async def _api(request: Request, exc: ApiError) -> Response:
    title = {403: "Not allowed", 404: "Not found"}.get(exc.status, "The CRM answered with an error")
    status = exc.status if 400 <= exc.status < 600 else 502
    return render(
        request,
        "error.html",
        status=status,
        session=getattr(request.state, "session", None),
        title=title,
        message=exc.message,
    )


async def _http(request: Request, exc: StarletteHTTPException) -> Response:
    if request.url.path.startswith(("/static/", "/healthz", "/readyz", "/metrics")):
        return Response(str(exc.detail), status_code=exc.status_code)
    title = "Page not found" if exc.status_code == 404 else "Request refused"
    return render(
        request,
        "error.html",
        status=exc.status_code,
        session=load_session(request),
        title=title,
        message=str(exc.detail),
    )


async def cookies(request: Request, call_next: Any) -> Response:
    started = time.perf_counter()
    response: Response = await call_next(request)
    # The page's server time (API calls included), for browsers' dev tools and `make bench`.
    response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.1f}"
    settings: ConsoleSettings = request.app.state.settings
    secure = settings.secure_cookies
    fresh_csrf = getattr(request.state, "csrf_value", None)
    if fresh_csrf and not request.cookies.get(CSRF_COOKIE):
        response.set_cookie(
            CSRF_COOKIE,
            fresh_csrf,
            max_age=int(settings.session_hours * 3600) + 3600,
            httponly=True,
            samesite="strict",
            secure=secure,
        )
    out = getattr(request.state, "session_out", None)
    session: Session | None = getattr(request.state, "session", None)
    if out is False:
        response.delete_cookie(SESSION_COOKIE, httponly=True, samesite="lax", secure=secure)
    elif isinstance(out, Session) or (session is not None and session.changed):
        chosen = out if isinstance(out, Session) else session
        assert chosen is not None
        response.set_cookie(
            SESSION_COOKIE,
            sealer(request).seal(chosen.to_doc()),
            max_age=int(settings.session_hours * 3600),
            httponly=True,
            samesite="lax",
            secure=secure,
        )
    if getattr(request.state, "clear_draft", False):
        response.delete_cookie(DRAFT_COOKIE, httponly=True, samesite="lax", secure=secure)
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "frame-ancestors 'none'; form-action 'self'",
    )
    return response


def install(app: FastAPI) -> None:
    """Exception handlers that answer in pages, and the cookie writer."""
    app.add_exception_handler(LoginRequired, _login)  # type: ignore[arg-type]
    app.add_exception_handler(SessionExpired, _expired)  # type: ignore[arg-type]
    app.add_exception_handler(CsrfRefused, _csrf)  # type: ignore[arg-type]
    app.add_exception_handler(PageForbidden, _forbidden)  # type: ignore[arg-type]
    app.add_exception_handler(ApiError, _api)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http)  # type: ignore[arg-type]
    app.middleware("http")(cookies)
