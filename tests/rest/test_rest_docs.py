"""The documentation pages /docs (Swagger UI) and /redoc (ReDoc), over real HTTP (issue #14).

They must load entirely from this server (deployments are often offline): every script,
style and image a page names is fetched from the service here and must answer 200.
"""

from __future__ import annotations

import base64
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from gmp_core import Service
from tests.rest.rest_support import TOKEN, ServiceFactory, base_url

PAGES = {"/docs": "swagger-ui-bundle.js", "/redoc": "redoc.standalone.js"}


class ReferencedFiles(HTMLParser):
    """Every URL an HTML page makes the browser load: scripts, styles, icons, images."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "script":
            if values.get("src"):
                self.urls.append(str(values["src"]))
            else:
                self.inline_scripts += 1
        elif tag == "link" and values.get("href"):
            self.urls.append(str(values["href"]))
        elif tag in ("img", "iframe", "embed", "source") and values.get("src"):
            self.urls.append(str(values["src"]))
        elif tag == "redoc" and values.get("spec-url"):
            self.urls.append(str(values["spec-url"]))

    def handle_data(self, data: str) -> None:
        if self.lasttag == "script" and data.strip():
            self.inline_scripts += 1


def referenced(page: str) -> ReferencedFiles:
    parser = ReferencedFiles()
    parser.feed(page)
    return parser


@pytest.mark.parametrize(("page", "bundle"), PAGES.items())
async def test_a_docs_page_loads_everything_from_this_server(
    anonymous: httpx.AsyncClient, page: str, bundle: str
) -> None:
    response = await anonymous.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    files = referenced(response.text)
    assert files.inline_scripts == 0  # so the policy below can forbid inline scripts
    assert any(url.endswith(bundle) for url in files.urls), files.urls
    page_url = str(response.url)
    for url in files.urls:
        assert not urlsplit(url).netloc and not urlsplit(url).scheme, f"{url} is not ours"
        loaded = await anonymous.get(urljoin(page_url, url))
        assert loaded.status_code == 200, url
        assert loaded.content, url
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self';" in policy


async def test_the_bundles_are_the_real_uis_with_their_types(anonymous: httpx.AsyncClient) -> None:
    swagger = await anonymous.get("/docs/static/swagger-ui-bundle.js")
    assert swagger.headers["content-type"].startswith("text/javascript")
    assert "SwaggerUIBundle" in swagger.text and len(swagger.content) > 500_000
    redoc = await anonymous.get("/docs/static/redoc.standalone.js")
    assert "Redoc" in redoc.text and len(redoc.content) > 500_000
    css = await anonymous.get("/docs/static/swagger-ui.css")
    assert css.headers["content-type"].startswith("text/css")
    assert css.headers["x-content-type-options"] == "nosniff"


async def test_swagger_ui_reads_our_document_and_nothing_else(
    anonymous: httpx.AsyncClient,
) -> None:
    start = (await anonymous.get("/docs/static/swagger-init.js")).text
    assert 'url: "openapi.json"' in start  # relative: right behind a path prefix too
    assert "validatorUrl: null" in start  # the default badge posts the document elsewhere
    assert "queryConfigEnabled: false" in start  # ?url= cannot load another document
    assert "://" not in start  # no absolute URL at all
    document = await anonymous.get(anonymous.base_url.join("/docs").join("openapi.json"))
    assert document.status_code == 200 and document.json()["openapi"].startswith("3.1")


async def test_public_docs_still_need_the_token_for_every_call(
    anonymous: httpx.AsyncClient,
) -> None:
    assert (await anonymous.get("/docs")).status_code == 200
    spec = (await anonymous.get("/openapi.json")).json()
    # What Swagger UI's "Authorize" offers, and then sends with every call of the page:
    assert spec["components"]["securitySchemes"]["token"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Token",
    }
    assert spec["security"] == [{"token": []}]
    assert (await anonymous.get("/status")).status_code == 401


async def test_files_beyond_the_pages_are_not_served(client: httpx.AsyncClient) -> None:
    for path in (
        "/docs/static/index.html",  # in the bundle, but not one the pages use
        "/docs/static/..%2f..%2fapp.py",
        "/docs/static/%2e%2e/docs_ui.py",
        "/docs/static/",
        "/docs/",
    ):
        response = await client.get(path)
        assert response.status_code == 404, path
        assert response.json() == {"ok": False, "error": "not found"}


async def test_a_browser_revalidates_the_files_cheaply(anonymous: httpx.AsyncClient) -> None:
    first = await anonymous.get("/docs/static/redoc.standalone.js")
    assert "no-cache" in first.headers["cache-control"]
    assert "public" not in first.headers["cache-control"]
    again = await anonymous.get(
        "/docs/static/redoc.standalone.js", headers={"If-None-Match": first.headers["etag"]}
    )
    assert again.status_code == 304 and not again.content


# ---------------------------------------------------------------- [rest] docs_public = false


@pytest.fixture
async def private_docs(start_service: ServiceFactory) -> Service:
    return await start_service(rest={"docs_public": False})


DOCS_PATHS = ["/docs", "/redoc", "/openapi.json", "/docs/static/swagger-ui-bundle.js"]


def basic(user: str, password: str) -> dict[str, str]:
    pair = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {pair}"}


async def test_private_docs_need_the_token(private_docs: Service) -> None:
    async with httpx.AsyncClient(base_url=base_url(private_docs)) as http:
        for path in DOCS_PATHS:
            refused = await http.get(path)
            assert refused.status_code == 401, path
            assert refused.json() == {"ok": False, "error": "Invalid or missing API token"}
            # ... and a browser asks its user for it
            assert refused.headers["www-authenticate"].startswith("Basic realm=")
            wrong = await http.get(path, headers={"X-API-Token": "wrong"})
            assert wrong.status_code == 401, path
            assert (await http.get(path, headers={"X-API-Token": TOKEN})).status_code == 200
        assert (await http.get("/health")).status_code == 200  # still open


async def test_a_browser_opens_private_docs_with_the_token_as_basic_password(
    private_docs: Service,
) -> None:
    async with httpx.AsyncClient(base_url=base_url(private_docs)) as http:
        for path in DOCS_PATHS:
            assert (await http.get(path, headers=basic("anyone", TOKEN))).status_code == 200
            assert (await http.get(path, headers=basic(TOKEN, "wrong"))).status_code == 401
            assert (await http.get(path, headers=basic("anyone", ""))).status_code == 401


async def test_basic_auth_never_opens_the_api_itself(private_docs: Service) -> None:
    """A browser sends cached Basic credentials with every request to the site, forged
    cross-site ones too: they may open the read-only pages, never an endpoint that acts."""
    async with httpx.AsyncClient(base_url=base_url(private_docs)) as http:
        for method, path in [("GET", "/status"), ("POST", "/commands/suspend")]:
            response = await http.request(method, path, headers=basic("anyone", TOKEN))
            assert response.status_code == 401, path
            assert "www-authenticate" not in response.headers
        assert (await http.get("/status", headers={"X-API-Token": TOKEN})).json()["active"]
