"""The API documentation pages: Swagger UI at ``/docs``, ReDoc at ``/redoc``, from this server.

Deployments are often offline, so nothing comes from a CDN: Swagger UI's and ReDoc's builds
are the package data of ``openapi-ui-bundles``, and the two pages, the script that starts
Swagger UI and ReDoc's page style are in ``ui/`` beside this file. Every URL in them is
relative, so they also work behind a proxy that serves the API under a path prefix.

``[rest] docs_public`` (default true) leaves the pages and ``/openapi.json`` open; every call
made from a page still needs the token (Swagger UI's "Authorize"). With ``docs_public =
false`` they need the token too: in ``X-API-Token``, or, since a browser cannot add a header
when it opens a page, as the password of HTTP Basic auth (any user name). Basic auth counts
for these read-only pages only, never for the API itself: a browser sends cached Basic
credentials with every request to the site, forged cross-site ones included.
"""

from __future__ import annotations

from pathlib import Path

import openapi_ui_bundles
from quart import Quart, Response, request, send_file
from quart_schema import hide
from werkzeug.exceptions import NotFound

UI = Path(__file__).parent / "ui"

# What the pages may load, by the name they use; nothing else is served from here.
ASSETS: dict[str, Path] = {
    "swagger-ui.css": openapi_ui_bundles.swagger_ui.static_path / "swagger-ui.css",
    "swagger-ui-bundle.js": openapi_ui_bundles.swagger_ui.static_path / "swagger-ui-bundle.js",
    "swagger-init.js": UI / "swagger-init.js",
    "redoc.standalone.js": openapi_ui_bundles.redoc.static_path / "redoc.standalone.js",
    "redoc-page.css": UI / "redoc-page.css",
}

# The endpoints that ``docs_public`` opens (``openapi`` is quart-schema's /openapi.json).
DOCS_ENDPOINTS = frozenset({"openapi", "docs_swagger", "docs_redoc", "docs_asset"})

# Only this server's scripts run. Both UIs write inline styles, ReDoc starts its search
# index as a blob: worker, and Swagger UI's icons are data: images.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'"
)
BASIC_REALM = 'Basic realm="genro-mail-proxy API docs", charset="UTF-8"'


def add_docs_routes(app: Quart) -> None:
    """``/docs``, ``/redoc`` and the files they load, left out of the OpenAPI document."""
    app.add_url_rule("/docs", "docs_swagger", hide(swagger_page), methods=["GET"])
    app.add_url_rule("/redoc", "docs_redoc", hide(redoc_page), methods=["GET"])
    app.add_url_rule("/docs/static/<name>", "docs_asset", hide(docs_asset), methods=["GET"])


async def swagger_page() -> Response:
    return await _serve(UI / "swagger.html", "text/html")


async def redoc_page() -> Response:
    return await _serve(UI / "redoc.html", "text/html")


async def docs_asset(name: str) -> Response:
    path = ASSETS.get(name)
    if path is None:
        raise NotFound()
    return await _serve(path, "text/css" if name.endswith(".css") else "text/javascript")


async def _serve(path: Path, mimetype: str) -> Response:
    response = await send_file(path, mimetype=f"{mimetype}; charset=utf-8", conditional=True)
    # Revalidated on every load (an ETag makes that a 304): a new version shows at once,
    # and shared caches keep nothing that may have needed the token.
    response.cache_control.public = False
    response.cache_control.private = True
    response.cache_control.no_cache = True
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def basic_auth_token() -> str | None:
    """The token a browser sent as the Basic auth password, for the docs endpoints."""
    credentials = request.authorization
    if credentials is None or credentials.type != "basic" or not credentials.password:
        return None
    return credentials.password
