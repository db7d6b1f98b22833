"""The department services behind the gateway: one pooled HTTP client, forwarding, health, docs."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any
from urllib.parse import urlsplit

import httpx
from crm_platform import tracing
from crm_platform.logging import correlation_id_var, request_id_var

from gateway import http1
from gateway.logctx import annotate

log = logging.getLogger("crm.gateway.upstream")

# Hop-by-hop headers (RFC 9110 7.6.1) and those the client recomputes are not forwarded.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
REQUEST_DROP = HOP_BY_HOP | {
    "host",
    "content-length",
    "x-request-id",
    "x-correlation-id",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
}
# The gateway's own server stamps date/server; request ids are set by the platform middleware.
RESPONSE_DROP = HOP_BY_HOP | {"date", "server", "x-request-id", "x-correlation-id"}


def no_cookie_jar() -> CookieJar:
    """A cookie jar that stores nothing: cookies pass through the gateway, never stay in it."""
    return CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))


class UpstreamError(Exception):
    status_code = 502
    code = "bad_gateway"

    def __init__(self, service: str, message: str) -> None:
        super().__init__(message)
        self.service = service
        self.message = message


class UpstreamUnavailable(UpstreamError):
    status_code = 503
    code = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    status_code = 504
    code = "upstream_timeout"


class UnknownService(LookupError):
    pass


# Idle upstream connections kept open for the next requests (see Upstreams.__init__).
KEEP_ALIVE = 20

# Bodies announced at most this large are read whole and answered in one piece;
# larger or unannounced ones (chunked) are streamed through.
SMALL_BODY_BYTES = 256 * 1024


@dataclass
class Forwarded:
    """An upstream response: its body read whole (``content``) or still to be streamed;
    ``response`` is httpx's when httpx carried it (uploads, HEAD, a test's transport)."""

    status_code: int
    headers: list[tuple[str, str]]
    body: AsyncIterator[bytes]
    closer: Callable[[], Awaitable[None]]
    content: bytes | None = None
    response: httpx.Response | None = None

    async def aclose(self) -> None:
        await self.closer()


class Upstreams:
    def __init__(
        self,
        urls: Mapping[str, str],
        *,
        timeout: float = 30.0,
        connect_timeout: float = 3.0,
        max_connections: int = 200,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.urls = dict(urls)
        # Forwarding goes through a lean pool per upstream (gateway.http1) unless a transport
        # is given (tests' mock upstreams); uploads and HEAD go through httpx either way.
        self.pools: dict[str, http1.Pool | None] = {}
        if transport is None:
            self.pools = {
                name: _pool(
                    url, max_connections=max_connections, timeout=timeout, connect_timeout=connect_timeout
                )
                for name, url in self.urls.items()
            }
        limits = httpx.Limits(
            max_connections=max_connections,
            # At most KEEP_ALIVE idle connections stay open. Keeping every connection was
            # measured to cost more: httpcore's pool scans its connections (twice nested, with
            # a poll() per idle one) on every request, and that grows faster than the cost of
            # the reconnects it saves (docs/performance.md, seventh session).
            max_keepalive_connections=min(KEEP_ALIVE, max_connections),
            keepalive_expiry=30.0,
        )
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=connect_timeout, pool=connect_timeout),
            # The client's ``limits`` only reach a transport it makes itself: the transport
            # made here gets them too (without, CRM_UPSTREAM_MAX_CONNECTIONS was not applied:
            # httpx's default transport allows 100).
            limits=limits,
            transport=transport or httpx.AsyncHTTPTransport(retries=1, limits=limits),
            follow_redirects=False,
            trust_env=False,
            # One client serves every user: it must never keep a Set-Cookie (the console's
            # session cookie) and send it with the next user's request.
            cookies=no_cookie_jar(),
        )

    async def aclose(self) -> None:
        for pool in self.pools.values():
            if pool is not None:
                await pool.aclose()
        await self.client.aclose()

    def base_url(self, service: str) -> str:
        try:
            return self.urls[service]
        except KeyError:
            raise UnknownService(service) from None

    async def forward(
        self,
        service: str,
        *,
        method: str,
        raw_path: str,
        query: bytes,
        headers: Mapping[str, str],
        body: bytes | AsyncIterator[bytes],
        client_host: str | None,
        scheme: str,
        host: str | None,
    ) -> Forwarded:
        """Send the request upstream and return its response head; the body streams on."""
        url = self.base_url(service) + raw_path
        out = _outgoing_headers(headers, client_host=client_host, scheme=scheme, host=host)
        pool = self.pools.get(service)
        if pool is not None and isinstance(body, bytes) and method != "HEAD":
            target = f"{raw_path}?{query.decode('latin-1')}" if query else raw_path
            return await self._lean(service, pool, method, target, out, body)
        if query:
            url = f"{url}?{query.decode('latin-1')}"
        return await self._via_httpx(service, method, raw_path, url, out, body)

    async def _via_httpx(
        self,
        service: str,
        method: str,
        raw_path: str,
        url: str,
        out: list[tuple[str, str]],
        body: bytes | AsyncIterator[bytes],
    ) -> Forwarded:
        """What the lean pool does not carry (uploads, HEAD, mock transports), through httpx."""
        request = self.client.build_request(method, httpx.URL(url), headers=out, content=body)
        started = time.perf_counter()
        annotate(upstream=service, upstream_url=self.base_url(service))
        try:
            response = await self.client.send(request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            self._failed(service, method, raw_path, started, exc)
            raise UpstreamUnavailable(service, f"{service} is unavailable: {type(exc).__name__}") from None
        except httpx.TimeoutException as exc:
            self._failed(service, method, raw_path, started, exc)
            raise UpstreamTimeout(service, f"{service} did not answer in time") from None
        except httpx.HTTPError as exc:
            self._failed(service, method, raw_path, started, exc)
            raise UpstreamError(service, f"{service} failed: {type(exc).__name__}") from None
        elapsed_ms = round((time.perf_counter() - started) * 1000, 2)
        annotate(upstream_status=response.status_code, upstream_ms=elapsed_ms)
        resp_headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in RESPONSE_DROP]
        forwarded = Forwarded(
            response.status_code, resp_headers, response.aiter_raw(), response.aclose, response=response
        )
        if _is_small(response):
            # Read whole (raw: the headers still describe these bytes) and answered in one
            # piece: streaming a small body costs a task and several ASGI messages per request.
            try:
                forwarded.content = await _read_raw(response)
            except httpx.HTTPError as exc:
                self._failed(service, method, raw_path, started, exc)
                raise UpstreamError(service, f"{service} failed: {type(exc).__name__}") from None
        return forwarded

    async def _lean(
        self,
        service: str,
        pool: http1.Pool,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes,
    ) -> Forwarded:
        """``forward`` through the service's lean pool (gateway.http1), the same errors and log fields."""
        started = time.perf_counter()
        annotate(upstream=service, upstream_url=self.urls[service])
        try:
            response = await pool.request(_request_head(method, pool, target, headers, len(body)), body)
            elapsed_ms = round((time.perf_counter() - started) * 1000, 2)
            annotate(upstream_status=response.status_code, upstream_ms=elapsed_ms)
            out = [(k, v) for k, v in response.headers if k.lower() not in RESPONSE_DROP]
            forwarded = Forwarded(response.status_code, out, response.stream(), response.aclose)
            length = next((v for k, v in response.headers if k.lower() == "content-length"), None)
            if length is not None and length.isdigit() and int(length) <= SMALL_BODY_BYTES:
                forwarded.content = await response.read()  # answered in one piece (see forward)
            return forwarded
        except http1.Http1Error as exc:
            self._failed(service, method, target, started, exc, exc.kind)
            raise _gateway_error(service, exc) from None

    def _failed(
        self, service: str, method: str, path: str, started: float, exc: Exception, kind: str | None = None
    ) -> None:
        elapsed_ms = round((time.perf_counter() - started) * 1000, 2)
        kind = kind or type(exc).__name__
        annotate(upstream_error=kind, upstream_ms=elapsed_ms)
        log.warning(
            "upstream %s failed: %s %s (%s)",
            service,
            method,
            path,
            kind,
            extra={"upstream": service, "upstream_error": kind, "upstream_ms": elapsed_ms},
        )

    async def health(self, timeout: float = 1.5) -> dict[str, str]:
        """Each upstream's ``/healthz``: 'ok' or why not."""

        async def one(service: str) -> tuple[str, str]:
            try:
                r = await self.client.get(self.base_url(service) + "/healthz", timeout=timeout)
            except httpx.HTTPError as exc:
                return service, f"unreachable: {type(exc).__name__}"
            return service, "ok" if r.status_code == 200 else f"unhealthy: HTTP {r.status_code}"

        return dict(await asyncio.gather(*(one(s) for s in self.urls)))

    async def openapi(self, service: str) -> dict[str, Any]:
        """The service's OpenAPI document, rewritten so requests go through the gateway."""
        try:
            r = await self.client.get(self.base_url(service) + "/openapi.json", headers=_trace_headers())
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise UpstreamUnavailable(service, f"{service} is unavailable: {type(exc).__name__}") from None
        except httpx.TimeoutException:
            raise UpstreamTimeout(service, f"{service} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise UpstreamError(service, f"{service} failed: {type(exc).__name__}") from None
        if r.status_code != 200:
            raise UpstreamError(service, f"{service} answered HTTP {r.status_code} for its OpenAPI document")
        try:
            doc = r.json()
        except ValueError:
            raise UpstreamError(service, f"{service} returned an OpenAPI document that is not JSON") from None
        if not isinstance(doc, dict):
            raise UpstreamError(service, f"{service} returned an OpenAPI document that is not an object")
        return rewrite_openapi(doc, service)


def _pool(url: str, *, max_connections: int, timeout: float, connect_timeout: float) -> http1.Pool | None:
    """The lean pool for a plain ``http://host:port`` upstream (None for any other URL: httpx)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/") or parts.query:
        return None
    return http1.Pool(
        parts.hostname,
        parts.port or 80,
        max_connections=max_connections,
        timeout=timeout,
        connect_timeout=connect_timeout,
    )


def _request_head(
    method: str, pool: http1.Pool, target: str, headers: list[tuple[str, str]], length: int
) -> bytes:
    """The request line and headers (``Host`` the upstream's, the body's ``Content-Length``)."""
    lines = [f"{method} {target} HTTP/1.1", f"host: {pool.host}:{pool.port}"]
    for name, value in headers:
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
            raise http1.ProtocolFailed(f"header {name!r} cannot be sent")
        lines.append(f"{name}: {value}")
    if length or method in ("POST", "PUT", "PATCH"):
        lines.append(f"content-length: {length}")
    try:
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    except UnicodeEncodeError:
        raise http1.ProtocolFailed("a header is not latin-1") from None


def _gateway_error(service: str, exc: http1.Http1Error) -> UpstreamError:
    """The gateway's answer for a lean pool's failure, as for httpx's (see ``forward``)."""
    name = exc.kind
    if isinstance(exc, http1.ConnectFailed | http1.PoolFull):
        return UpstreamUnavailable(service, f"{service} is unavailable: {name}")
    if isinstance(exc, http1.TimedOut):
        return UpstreamTimeout(service, f"{service} did not answer in time")
    return UpstreamError(service, f"{service} failed: {name}")


def _is_small(response: httpx.Response) -> bool:
    length = response.headers.get("content-length")
    return length is not None and length.isdigit() and int(length) <= SMALL_BODY_BYTES


async def _read_raw(response: httpx.Response) -> bytes:
    try:
        return b"".join([chunk async for chunk in response.aiter_raw()])
    finally:
        await response.aclose()


def _outgoing_headers(
    headers: Mapping[str, str], *, client_host: str | None, scheme: str, host: str | None
) -> list[tuple[str, str]]:
    """The caller's headers minus hop-by-hop ones, plus trace and ``X-Forwarded-*`` headers.

    With tracing on, the caller's ``traceparent``/``tracestate`` are replaced by the
    gateway's request span (crm_platform.tracing), so the service's span is its child.
    """
    carrier = tracing.current_carrier()
    drop = REQUEST_DROP | set(tracing.HEADERS) if carrier else REQUEST_DROP
    out = [(k, v) for k, v in headers.items() if k.lower() not in drop]
    out += _trace_headers()
    out += list((carrier or {}).items())
    prior = headers.get("x-forwarded-for")
    if client_host:
        out.append(("x-forwarded-for", f"{prior}, {client_host}" if prior else client_host))
    out.append(("x-forwarded-proto", scheme))
    if host:
        out.append(("x-forwarded-host", host))
    return out


def _trace_headers() -> list[tuple[str, str]]:
    out = []
    if (rid := request_id_var.get()) is not None:
        out.append(("x-request-id", rid))
    if (cid := correlation_id_var.get()) is not None:
        out.append(("x-correlation-id", cid))
    return out


def rewrite_openapi(doc: dict[str, Any], service: str) -> dict[str, Any]:
    """Point ``servers`` at ``/api/{service}`` and declare the bearer token for "try it out"."""
    doc = dict(doc)
    doc["servers"] = [{"url": f"/api/{service}", "description": f"{service} through the gateway"}]
    components = dict(doc.get("components") or {})
    schemes = dict(components.get("securitySchemes") or {})
    if not schemes:
        schemes["bearer"] = {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "the access_token from POST /auth/login on the gateway",
        }
        components["securitySchemes"] = schemes
        doc["components"] = components
        doc.setdefault("security", [{"bearer": []}])
    return doc
