"""API documentation of every service, reachable through the gateway (no token needed).

The Swagger UI assets are served by the gateway itself (``/docs/assets``), never from a CDN.
"""

from __future__ import annotations

import html
from typing import Annotated, Any

from crm_platform.docs import swagger_page
from crm_platform.errors import NotFound
from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse, JSONResponse

from gateway.api.deps import get_upstreams
from gateway.domain.routes import SERVICES
from gateway.upstream import Upstreams

router = APIRouter(tags=["docs"])
GATEWAY = "gateway"
TITLES = {
    GATEWAY: "Gateway: login and users",
    "leads": "Leads (marketing)",
    "sales": "Sales",
    "service-desk": "Service desk (customer service and success)",
    "analytics": "Analytics",
}


@router.get("/docs", include_in_schema=False)
async def docs_index() -> HTMLResponse:
    items = "\n".join(
        f'<li><a href="/docs/{html.escape(name)}">{html.escape(TITLES[name])}</a>'
        f" &mdash; <code>{html.escape(_openapi_url(name))}</code></li>"
        for name in (GATEWAY, *SERVICES)
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>CRM API documentation</title></head>
<body style="font-family: sans-serif; max-width: 46em; margin: 2em auto">
<h1>CRM API documentation</h1>
<p>Every service is reached through this gateway at <code>/api/&lt;service&gt;/...</code>.
Get a token with <code>POST /auth/login</code>, then use "Authorize" in each page.</p>
<ul>
{items}
</ul>
</body></html>"""
    return HTMLResponse(page)


@router.get("/docs/{service}", include_in_schema=False)
async def service_docs(service: str) -> HTMLResponse:
    if service != GATEWAY and service not in SERVICES:
        raise NotFound(f"unknown service {service!r}", service=service)
    return swagger_page(_openapi_url(service), f"CRM {TITLES[service]} - API")


@router.get("/api/{service}/openapi.json", include_in_schema=False)
async def service_openapi(
    service: str, upstreams: Annotated[Upstreams, Depends(get_upstreams)]
) -> JSONResponse:
    if service not in SERVICES:
        raise NotFound(f"unknown service {service!r}", service=service)
    doc: dict[str, Any] = await upstreams.openapi(service)
    return JSONResponse(doc)


def _openapi_url(service: str) -> str:
    return "/openapi.json" if service == GATEWAY else f"/api/{service}/openapi.json"
