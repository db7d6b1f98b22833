"""Pages against a fake gateway: cookies, CSRF, expiry with the draft kept, roles, API errors."""

from __future__ import annotations

import re
import time

import httpx
from console.bootstrap import ROUTERS
from console.session import DRAFT_COOKIE, SESSION_COOKIE, Sealer
from console.web import verify_csrf
from fastapi.routing import APIRoute


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([0-9a-f]+)"', html)
    assert found, "no CSRF token in the page"
    return found.group(1)


async def login(
    console: httpx.AsyncClient, username: str = "maria", password: str = "maria-pass", **extra: str
) -> httpx.Response:
    page = await console.get("/login")
    return await console.post(
        "/login", data={"csrf_token": csrf_of(page.text), "username": username, "password": password, **extra}
    )


async def test_login_sets_a_sealed_httponly_samesite_secure_session_cookie(console, fake_gateway) -> None:
    r = await login(console)
    assert r.status_code == 303
    assert r.headers["location"] == "/leads"
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith(f"{SESSION_COOKIE}="))
    assert "HttpOnly" in cookie
    assert "SameSite=lax" in cookie
    assert "Secure" in cookie
    value = cookie.split(";")[0].split("=", 1)[1]
    assert "maria" not in value
    assert fake_gateway.issue("maria")["refresh_token"][:6] not in value


async def test_a_wrong_password_is_shown_next_to_the_password_field(console) -> None:
    r = await login(console, password="nope")
    assert r.status_code == 401
    assert 'id="err-password"' in r.text
    assert "unknown user or wrong password" in r.text
    assert 'value="maria"' in r.text  # the username stays typed


async def test_a_form_without_its_csrf_token_is_refused_and_nothing_is_sent(console, fake_gateway) -> None:
    await login(console)
    before = len(fake_gateway.calls)
    r = await console.post("/leads/new", data={"name": "X", "email": "x@y.io", "source_channel": "web_form"})
    assert r.status_code == 403
    assert "Form refused" in r.text
    forged = await console.post("/leads/new", data={"csrf_token": "0" * 64, "name": "X", "email": "x@y.io"})
    assert forged.status_code == 403
    assert len(fake_gateway.calls) == before
    assert fake_gateway.leads == {}


async def test_a_csrf_token_is_bound_to_its_cookie(console_settings) -> None:
    sealer = Sealer(console_settings().session_key())
    assert sealer.csrf_valid("cookie-a", sealer.csrf_token("cookie-a"))
    assert not sealer.csrf_valid("cookie-b", sealer.csrf_token("cookie-a"))
    assert not sealer.csrf_valid(None, sealer.csrf_token("cookie-a"))


async def test_every_form_route_checks_the_csrf_token() -> None:
    posts = [
        r
        for router in ROUTERS
        for r in router.routes
        if isinstance(r, APIRoute) and "POST" in (r.methods or set())
    ]
    assert len(posts) >= 15
    for route in posts:
        assert any(d.call is verify_csrf for d in route.dependant.dependencies), route.path


async def test_an_api_validation_error_is_shown_next_to_its_field_with_the_typed_values(console) -> None:
    await login(console)
    page = await console.get("/leads/new")
    r = await console.post(
        "/leads/new",
        data={
            "csrf_token": csrf_of(page.text),
            "name": "Ada",
            "email": "not-an-email",
            "source_channel": "web_form",
        },
    )
    assert r.status_code == 422
    assert 'id="err-email"' in r.text
    assert "not an email address" in r.text
    assert 'value="Ada"' in r.text


async def test_an_access_token_near_expiry_is_refreshed_and_the_cookie_rewritten(
    console, fake_gateway
) -> None:
    fake_gateway.access_ttl = 5  # inside the 30 s refresh margin
    await login(console)
    old = console.cookies[SESSION_COOKIE]
    r = await console.get("/leads")
    assert r.status_code == 200
    assert ("POST", "/auth/refresh", {"refresh_token": "r-maria-0"}) in fake_gateway.calls
    assert console.cookies[SESSION_COOKIE] != old


async def test_an_ended_session_sends_the_user_to_log_in_and_back_with_what_they_typed(
    console, fake_gateway
) -> None:
    await login(console)
    page = await console.get("/leads/new")
    fake_gateway.revoked.update(fake_gateway.issue("maria")["access_token"] for _ in range(1))
    fake_gateway.refresh_ok = False
    # The API now refuses the token and the refresh: the session has ended at the gateway.
    fake_gateway.revoked.add(_access_token(console))
    r = await console.post(
        "/leads/new",
        data={
            "csrf_token": csrf_of(page.text),
            "_page": "/leads/new",
            "name": "Ada Lovelace",
            "email": "ada@example.com",
            "source_channel": "webinar",
        },
    )
    assert r.status_code == 303
    assert r.headers["location"].startswith("/login?next=%2Fleads%2Fnew&expired=1")
    assert DRAFT_COOKIE in console.cookies
    assert fake_gateway.leads == {}
    fake_gateway.refresh_ok = True
    login_page = await console.get(r.headers["location"])
    assert "Your session has expired" in login_page.text
    back = await console.post(
        "/login",
        data={
            "csrf_token": csrf_of(login_page.text),
            "username": "maria",
            "password": "maria-pass",
            "next": "/leads/new",
        },
    )
    assert back.headers["location"] == "/leads/new?ok=restored"
    form = await console.get(back.headers["location"])
    assert 'value="Ada Lovelace"' in form.text
    assert 'value="ada@example.com"' in form.text
    assert "What you typed is back" in form.text
    assert DRAFT_COOKIE not in console.cookies  # shown once


async def test_without_a_session_a_page_redirects_to_login_and_remembers_where(console) -> None:
    r = await console.get("/inbox?status=accepted")
    assert r.status_code == 303
    assert r.headers["location"] == "/login?next=%2Finbox%3Fstatus%3Daccepted"


async def test_a_page_of_another_role_answers_403_in_words(console) -> None:
    await login(console)
    r = await console.get("/inbox")
    assert r.status_code == 403
    assert "Inbox is for the roles: administrator, sales manager, sales rep" in r.text
    assert "You are signed in as: marketing" in r.text
    assert 'href="/inbox"' not in r.text  # not in maria's menu either


async def test_logout_ends_the_session_at_the_gateway_and_drops_the_cookie(console, fake_gateway) -> None:
    await login(console)
    page = await console.get("/leads")
    r = await console.post("/logout", data={"csrf_token": csrf_of(page.text)})
    assert r.status_code == 303
    assert r.headers["location"] == "/login?ok=loggedout"
    assert any(c[1] == "/auth/logout" for c in fake_gateway.calls)
    assert SESSION_COOKIE not in console.cookies
    assert (await console.get("/leads")).status_code == 303


async def test_a_session_cookie_older_than_the_session_limit_is_refused(console_settings) -> None:
    sealer = Sealer(console_settings().session_key())
    sealed = sealer.seal({"a": "x"})
    assert sealer.open(sealed, 3600) == {"a": "x"}
    assert sealer.open(sealed[:-2] + "AA", 3600) is None
    time_travel = Sealer(console_settings().session_key())
    assert time_travel.open(sealed, -1) is None


async def test_static_assets_are_served_locally(console) -> None:
    js = await console.get("/static/htmx.min.js")
    assert js.status_code == 200
    assert "htmx" in js.text[:200]
    css = await console.get("/static/console.css")
    assert css.status_code == 200
    assert "@media (max-width: 720px)" in css.text


def _access_token(console: httpx.AsyncClient) -> str:
    from console.session import Session

    key = console._transport.app.state.sealer  # type: ignore[attr-defined]
    doc = key.open(console.cookies[SESSION_COOKIE], 3600)
    session = Session.from_doc(doc)
    assert session is not None
    assert session.expires_at > time.time()
    return session.access_token


async def test_the_lead_list_asks_the_leads_api_to_search_filter_sort_and_page(console, fake_gateway) -> None:
    await login(console)
    fake_gateway.leads["lead-1"] = {
        "id": "lead-1", "name": "Ada", "email": "ada@x.io", "company": "X", "status": "new", "score": 45.0,
        "source_channel": "webinar", "campaign": "spring", "updated_at": "2026-12-01T10:00:00Z",
    }  # fmt: skip
    query = {"search": "ada", "status": "new", "campaign": "spring", "min_score": "40", "sort": "score"}
    r = await console.get("/leads", params=query)
    assert r.status_code == 200
    assert fake_gateway.last_params == {
        "q": "ada", "status": "new", "campaign": "spring", "min_score": "40", "sort": "score", "limit": "50",
    }  # fmt: skip
    assert '<option value="score" selected>' in r.text
    r = await console.get("/leads", params={"campaign": "spring"})
    assert 'href="/leads/lead-1"' in r.text
    assert "Next page" in r.text
    assert "cursor=next-page" in r.text
    page_two = await console.get("/leads", params={"campaign": "spring", "cursor": "next-page"})
    assert fake_gateway.last_params["cursor"] == "next-page"
    assert 'href="/leads?campaign=spring">First page' in page_two.text


async def test_a_bad_score_bound_is_shown_next_to_its_field(console, fake_gateway) -> None:
    await login(console)
    r = await console.get("/leads", params={"min_score": "lots"})
    assert r.status_code == 422
    assert 'id="err-min_score"' in r.text
    assert "Input should be a valid number" in r.text
    assert 'aria-describedby="err-min_score"' in r.text
    assert 'value="lots"' in r.text


def _rules_form(csrf: str, **changes: str) -> dict[str, str]:
    form = {"csrf_token": csrf, "threshold": "50", "expected_version": "1"}
    for behaviour in ("page_view", "email_open", "form_submit", "trial_signup"):
        form[f"{behaviour}.weight"] = "10"
        form[f"{behaviour}.cap"] = ""
    return form | changes


async def test_a_rules_draft_is_previewed_before_saving_with_what_was_typed(console, fake_gateway) -> None:
    await login(console)
    page = await console.get("/scoring")
    assert 'formaction="/scoring/preview"' in page.text
    r = await console.post(
        "/scoring/preview", data=_rules_form(csrf_of(page.text), **{"page_view.weight": "7.5"})
    )
    assert r.status_code == 200, r.text
    path, sent = fake_gateway.rule_drafts[-1]
    assert path == "/preview"
    assert sent["threshold"] == 50
    assert sent["rules"]["page_view"] == {"weight": 7.5, "cap": None}
    preview = r.text.split('id="preview"')[1].split("</section>")[0]
    assert "Of the 1,234 leads still being scored" in preview
    assert 'qualify with these rules</th><td class="num">95<' in preview
    assert (
        'would qualify only with these (at their next behaviour once saved)</th><td class="num">57<'
        in preview
    )
    assert 'value="7.5"' in r.text  # what was typed, to save next
    assert [p for p, _ in fake_gateway.rule_drafts] == ["/preview"]  # nothing saved


async def test_a_refused_draft_is_shown_next_to_the_rules_field(console, fake_gateway) -> None:
    await login(console)
    page = await console.get("/scoring")
    for action in ("/scoring/preview", "/scoring"):
        r = await console.post(action, data=_rules_form(csrf_of(page.text), **{"email_open.cap": "0"}))
        assert r.status_code == 422, (action, r.text)
        assert (
            "must be &gt;= 1 (omit it for no cap)"
            in r.text.split('id="f-email_open-cap"')[1].split("</td>")[0]
        )
    r = await console.post("/scoring/preview", data=_rules_form(csrf_of(page.text), threshold="lots"))
    assert r.status_code == 422
    assert "&#39;lots&#39; is not a number." in r.text
