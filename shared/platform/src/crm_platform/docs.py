"""Swagger UI from local files: ``/docs`` works offline and behind strict CSPs.

FastAPI's default page loads its script and stylesheet from a public CDN, so on
a machine or network without internet the page is blank. The assets come from
the ``swagger-ui-bundle`` package (the Swagger UI dist files) and are served
under ``/docs/assets``; the gateway's aggregated docs use the same page.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

ASSETS = "/docs/assets"


def swagger_page(openapi_url: str, title: str) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=openapi_url,
        title=title,
        swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS}/favicon-32x32.png",
    )


def install_local_docs(app: FastAPI, title: str, *, page: bool = True) -> None:
    """The Swagger assets under ``/docs/assets`` and, unless ``page`` is False, the ``/docs`` page."""
    app.mount(ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="swagger-assets")
    if not page:
        return

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return swagger_page(app.openapi_url or "/openapi.json", f"{title} - API")
