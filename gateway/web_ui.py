"""The web page: ``/`` and its static files (HTML, CSS, JavaScript modules).

The page is plain files with no build step; it talks to the REST interface
like any other client, with the token the person signs in with. Its routes
are named ``ui:...`` so that the OpenAPI document, which describes the API,
can leave them out (``tests/gateway/test_openapi.py`` skips them by name).
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).parent / "static"
STATIC_PREFIX = "/static/"
UI_NAME_PREFIX = "ui:"

# The page loads only its own files and talks only to its own origin: no
# inline script or style, so an injected string cannot run.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; "
        "img-src 'self' data:; connect-src 'self'; form-action 'none'; "
        "base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def add_ui_routes(app: web.Application) -> None:
    """Serve the page at ``/`` and its files under ``/static/``."""
    app.router.add_get("/", index, name=f"{UI_NAME_PREFIX}index")
    app.router.add_static(
        STATIC_PREFIX, STATIC, name=f"{UI_NAME_PREFIX}static", show_index=False
    )


def is_ui_route(route: web.AbstractRoute) -> bool:
    """Return whether ``route`` serves the page rather than the API."""
    resource = route.resource
    return resource is not None and (resource.name or "").startswith(UI_NAME_PREFIX)


async def index(request: web.Request) -> web.FileResponse:
    """``/``: the dashboard page."""
    return web.FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)
