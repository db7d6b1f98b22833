"""The gateway's public API, called with the signed-in user's token.

One pooled HTTP client per process; every call carries the user's bearer token,
the request id of the page being served and, for writes, an Idempotency-Key. An
access token about to expire is refreshed first (``POST /auth/refresh``); a 401
is retried once after a refresh; a refresh the gateway refuses ends the session
(:class:`SessionExpired`), and the page sends the user to log in.

A page may make its calls concurrently (``asyncio.gather``): the calls of one page share
one refresh (a lock, and a token that changed while waiting is not refreshed again), since
the gateway's refresh tokens are single-use.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx

from console.session import Session


class SessionExpired(Exception):
    """The gateway no longer accepts this session: the user must log in again."""


@dataclass
class ApiError(Exception):
    """An answer of the API other than success, in words for the page."""

    status: int
    code: str
    message: str
    fields: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        try:
            body = response.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        message = str(body.get("message") or body.get("detail") or response.reason_phrase or "error")
        fields: dict[str, str] = {}
        for entry in body.get("fields") or []:
            if isinstance(entry, dict) and entry.get("field"):
                fields[field_name(str(entry["field"]))] = str(entry.get("message", "invalid"))
        details = body.get("details")
        if isinstance(details, dict) and isinstance(details.get("field"), str):
            fields[field_name(details["field"])] = message
        if response.status_code == 429 and response.headers.get("retry-after"):
            message = f"{message} (try again in {response.headers['retry-after']} s)"
        return cls(response.status_code, str(body.get("error", "error")), message, fields)


def field_name(path: str) -> str:
    """``body.consent.marketing_email`` -> ``consent.marketing_email``; ``body.email`` -> ``email``."""
    parts = [p for p in path.split(".") if p not in ("body", "query", "path")]
    return ".".join(parts) or path


class Gateway:
    """Calls to the gateway for one process (the HTTP pool) and per user (the token)."""

    def __init__(self, base_url: str, timeout: float, transport: httpx.AsyncBaseTransport | None = None):
        # Shared by every user: it must never keep a cookie from one answer for the next request.
        self.http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            timeout=timeout,
            transport=transport,
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def login(self, username: str, password: str) -> Session:
        """A new session, or :class:`ApiError` (401: the password; 503: the CRM is unreachable)."""
        try:
            r = await self.http.post("/auth/login", json={"username": username, "password": password})
        except httpx.TransportError:
            raise ApiError(
                503, "unavailable", "The CRM cannot be reached right now; try again in a moment."
            ) from None
        if r.status_code != 200:
            raise ApiError.from_response(r)
        body = r.json()
        session = Session.from_tokens(body["access_token"], body["refresh_token"])
        me = await self.http.get("/auth/me", headers=_bearer(session.access_token))
        if me.status_code == 200:
            session.display_name = me.json().get("display_name")
        return session

    async def logout(self, session: Session) -> None:
        await self.http.post("/auth/logout", headers=_bearer(session.access_token))

    async def refresh(self, session: Session) -> None:
        r = await self.http.post("/auth/refresh", json={"refresh_token": session.refresh_token})
        if r.status_code != 200:
            raise SessionExpired(ApiError.from_response(r).message)
        body = r.json()
        fresh = Session.from_tokens(body["access_token"], body["refresh_token"], session.display_name)
        session.access_token, session.refresh_token = fresh.access_token, fresh.refresh_token
        session.expires_at, session.roles = fresh.expires_at, fresh.roles
        session.changed = True

    def for_user(self, session: Session, request_id: str | None, refresh_margin: float) -> UserApi:
        return UserApi(self, session, request_id, refresh_margin)


@dataclass
class UserApi:
    gateway: Gateway
    session: Session
    request_id: str | None
    refresh_margin: float
    _refreshing: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    async def _refresh(self, stale: str | None) -> None:
        """Refresh once for every concurrent call of this page: a call that waited for another's
        refresh finds the token changed (``stale`` is the token it saw) and does not refresh again.
        ``stale=None``: refresh if the token is (still) about to expire."""
        async with self._refreshing:
            if stale is None and not self.session.needs_refresh(self.refresh_margin):
                return
            if stale is not None and self.session.access_token != stale:
                return
            await self.gateway.refresh(self.session)

    async def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        return await self.call("GET", path, params=params)

    async def post(self, path: str, body: Any = None) -> Any:
        return await self.call("POST", path, json=body if body is not None else {})

    async def put(self, path: str, body: Any) -> Any:
        return await self.call("PUT", path, json=body)

    async def patch(self, path: str, body: Any) -> Any:
        return await self.call("PATCH", path, json=body)

    async def call(
        self, method: str, path: str, *, params: dict[str, Any] | None = None, json: Any = None
    ) -> Any:
        if self.session.needs_refresh(self.refresh_margin):
            await self._refresh(None)
        # One key per user action: a retry after a refresh must not act twice.
        key = str(uuid.uuid4()) if method == "POST" else None
        sent_with = self.session.access_token
        response = await self._send(method, path, params, json, key)
        if response.status_code == 401:
            await self._refresh(sent_with)
            response = await self._send(method, path, params, json, key)
            if response.status_code == 401:
                raise SessionExpired(ApiError.from_response(response).message)
        if response.status_code >= 400:
            raise ApiError.from_response(response)
        return response.json() if response.content else None

    async def open_stream(self, path: str, params: dict[str, Any] | None = None) -> httpx.Response:
        """A GET whose body is passed on as it arrives (an export); the caller closes it.

        A refusal is read whole and raised as :class:`ApiError` like any other call's.
        """
        if self.session.needs_refresh(self.refresh_margin):
            await self._refresh(None)
        sent_with = self.session.access_token
        response = await self._send("GET", path, params, None, None, stream=True)
        if response.status_code == 401:
            await response.aclose()
            await self._refresh(sent_with)
            response = await self._send("GET", path, params, None, None, stream=True)
        if response.status_code >= 400:
            await response.aread()
            await response.aclose()
            if response.status_code == 401:
                raise SessionExpired(ApiError.from_response(response).message)
            raise ApiError.from_response(response)
        return response

    async def _send(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None,
        json: Any,
        key: str | None,
        *,
        stream: bool = False,
    ) -> httpx.Response:
        headers = _bearer(self.session.access_token)
        if self.request_id:
            headers["X-Request-ID"] = self.request_id
        if key:
            headers["Idempotency-Key"] = key
        clean = {k: v for k, v in (params or {}).items() if v not in (None, "")}
        try:
            request = self.gateway.http.build_request(method, path, params=clean, json=json, headers=headers)
            return await self.gateway.http.send(request, stream=stream)
        except httpx.TimeoutException:
            raise ApiError(504, "timeout", "the CRM did not answer in time; try again") from None
        except httpx.TransportError:
            raise ApiError(503, "unavailable", "the CRM cannot be reached right now; try again") from None


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
