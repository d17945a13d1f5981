"""gmp_register_routes: plugins add endpoints to the API, public or authenticated, for the
whole proxy or scoped to the caller's accounts; views get a framework-neutral request."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from gmp_core import ConfigError, RouteAnswer, RouteRequest, Service, hookimpl
from tests.rest.rest_support import TOKEN, ServiceFactory, base_url


class PingRoutes:
    """A plugin serving /ping (public) and /secret-ping (token needed)."""

    __name__ = "test-ping-routes"

    @hookimpl
    def gmp_register_routes(self, register: Callable[..., None], service: Service) -> None:
        async def ping() -> tuple[bytes, int, dict[str, str]]:
            return b"pong", 200, {"Content-Type": "text/plain", "X-Active": str(service.active)}

        async def teapot() -> tuple[str, int, dict[str, str]]:
            return "short and stout", 418, {}

        register("/ping", ping, public=True)
        register("/secret-ping", ping)
        register("/teapot", teapot, public=True)


async def test_hook_gmp_register_routes_served_with_or_without_the_token(
    start_service: ServiceFactory,
) -> None:
    service = await start_service(PingRoutes())
    async with httpx.AsyncClient(base_url=base_url(service)) as anonymous:
        response = await anonymous.get("/ping")
        assert (response.status_code, response.text) == (200, "pong")
        assert response.headers["x-active"] == "True"
        assert (await anonymous.get("/teapot")).status_code == 418
        refused = await anonymous.get("/secret-ping")
        assert refused.status_code == 401
        assert refused.json() == {"ok": False, "error": "Invalid or missing API token"}
        allowed = await anonymous.get("/secret-ping", headers={"X-API-Token": TOKEN})
        assert (allowed.status_code, allowed.text) == (200, "pong")
        wrong_method = await anonymous.post("/ping", headers={"X-API-Token": TOKEN})
        assert wrong_method.status_code == 405  # GET only
        spec = (await anonymous.get("/openapi.json")).json()
        ping, secret = spec["paths"]["/ping"]["get"], spec["paths"]["/secret-ping"]["get"]
        assert ping["security"] == [] and "401" not in ping["responses"]
        assert "text/plain" in ping["responses"]["200"]["content"]
        assert ping["summary"] == "GET /ping" and ping["description"] == "Added by a plugin."
        assert "401" in secret["responses"] and "403" in secret["responses"]  # whole proxy


SHOP_TOKEN = "shop-token-0123456789"


class ThingRoutes:
    """A plugin whose views take the request: path parameters, query, JSON body, principal."""

    __name__ = "test-thing-routes"

    def __init__(self) -> None:
        self.seen: list[RouteRequest] = []

    @hookimpl
    def gmp_register_routes(self, register: Callable[..., None], service: Service) -> None:
        async def echo(request: RouteRequest) -> RouteAnswer:
            self.seen.append(request)
            principal = request.principal
            return (
                {
                    "method": request.method,
                    "path": request.path,
                    "params": request.path_params,
                    "query": request.query,
                    "json": request.json,
                    "principal": principal.name if principal else None,
                    "accounts": (
                        sorted(principal.accounts)
                        if principal and principal.accounts is not None
                        else None
                    ),
                },
                200,
                {"X-Thing": "yes"},
            )

        register("/things/{thing_id}/parts/{part}", echo, scoped=True)
        register("/things", echo, methods=("POST", "delete"), scoped=True)
        register("/things-for-admins", echo)
        register("/things-for-all", echo, public=True)


async def test_hook_gmp_register_routes_hands_views_a_neutral_request(
    start_service: ServiceFactory,
) -> None:
    plugin = ThingRoutes()
    tokens = [{"token": SHOP_TOKEN, "accounts": ["shop"]}]
    service = await start_service(plugin, token_auth={"api_token": TOKEN, "account_tokens": tokens})
    async with (
        httpx.AsyncClient(base_url=base_url(service), headers={"X-API-Token": TOKEN}) as admin,
        httpx.AsyncClient(base_url=base_url(service), headers={"X-API-Token": SHOP_TOKEN}) as shop,
    ):
        got = await admin.get("/things/t%201/parts/wheel", params={"limit": "5", "x": ""})
        assert got.status_code == 200 and got.headers["content-type"] == "application/json"
        assert got.headers["x-thing"] == "yes"
        assert got.json() == {
            "method": "GET",
            "path": "/things/t 1/parts/wheel",
            "params": {"thing_id": "t 1", "part": "wheel"},
            "query": {"limit": "5", "x": ""},
            "json": None,
            "principal": "token",
            "accounts": None,
        }
        posted = await admin.post("/things", json={"name": "bolt", "sizes": [1, 2]})
        assert posted.json()["json"] == {"name": "bolt", "sizes": [1, 2]}
        deleted = await admin.delete("/things")
        assert (deleted.json()["method"], deleted.json()["json"]) == ("DELETE", {})
        assert (await admin.put("/things")).status_code == 405
        malformed = await admin.post(
            "/things", content=b"{nope", headers={"Content-Type": "application/json"}
        )
        assert malformed.status_code == 400 and "invalid JSON body" in malformed.json()["error"]

        # A caller limited to some accounts reaches scoped routes, with its accounts given,
        # and is refused the others, which act on the whole proxy.
        scoped = await shop.get("/things/a/parts/b")
        assert (scoped.json()["principal"], scoped.json()["accounts"]) == (
            "account_tokens[0]",
            ["shop"],
        )
        refused = await shop.get("/things-for-admins")
        assert refused.status_code == 403 and "whole proxy" in refused.json()["error"]
        assert (await admin.get("/things-for-admins")).status_code == 200

    async with httpx.AsyncClient(base_url=base_url(service)) as anonymous:
        assert (await anonymous.get("/things/a/parts/b")).status_code == 401
        public = await anonymous.get("/things-for-all")
        assert public.json()["principal"] is None
    assert len(plugin.seen) == 6  # refused requests never reached a view


class ClashingRoutes:
    __name__ = "test-clashing-routes"

    def __init__(self, path: str, methods: tuple[str, ...] = ("GET",)) -> None:
        self.path, self.methods = path, methods

    @hookimpl
    def gmp_register_routes(self, register: Callable[..., None]) -> None:
        async def view() -> RouteAnswer:
            return "", 200, {}

        register(self.path, view, methods=self.methods)


@pytest.mark.parametrize(
    ("path", "methods", "error"),
    [
        ("/messages", ("GET",), "two routes for GET /messages"),
        ("/things/<id>", ("GET",), "names parameters as {name}"),
        ("/things", ("TRACE",), "methods must be some of"),
    ],
)
async def test_a_route_that_cannot_be_served_stops_start_up(
    start_service: ServiceFactory, path: str, methods: tuple[str, ...], error: str
) -> None:
    with pytest.raises(ConfigError, match=error) as raised:
        await start_service(ClashingRoutes(path, methods))
    assert "raised by plugin 'test-clashing-routes' in gmp_register_routes" in str(
        raised.value.__notes__
    )


NOTES = [{"account_id": "shop", "text": "restock"}, {"account_id": "blog", "text": "draft"}]


class NotesRoutes:
    """The example of docs/plugins.md, as written there."""

    __name__ = "test-notes-routes"

    @hookimpl
    def gmp_register_routes(self, register: Callable[..., None], service: Service) -> None:
        async def notes(request: RouteRequest) -> RouteAnswer:
            principal = request.principal
            assert principal is not None
            wanted = request.query.get("account_id")
            if wanted and not principal.may_use(wanted):
                return {"ok": False, "error": "account_id: not allowed for this caller"}, 403, {}
            visible = [n for n in NOTES if principal.may_use(n["account_id"])]
            return {"ok": True, "notes": visible}, 200, {}

        async def feed() -> RouteAnswer:
            return ["a", "b"], 200, {"content-type": "application/feed+json"}

        register("/notes", notes, scoped=True)
        register("/feed", feed)


async def test_hook_gmp_register_routes_the_documented_scoped_example(
    start_service: ServiceFactory,
) -> None:
    tokens = [{"token": SHOP_TOKEN, "accounts": ["shop"]}]
    service = await start_service(
        NotesRoutes(), token_auth={"api_token": TOKEN, "account_tokens": tokens}
    )
    async with (
        httpx.AsyncClient(base_url=base_url(service), headers={"X-API-Token": TOKEN}) as admin,
        httpx.AsyncClient(base_url=base_url(service), headers={"X-API-Token": SHOP_TOKEN}) as shop,
    ):
        assert (await admin.get("/notes")).json()["notes"] == NOTES
        assert (await shop.get("/notes")).json() == {"ok": True, "notes": NOTES[:1]}
        refused = await shop.get("/notes", params={"account_id": "blog"})
        assert refused.status_code == 403
        feed = await admin.get("/feed")
        assert feed.headers.get_list("content-type") == ["application/feed+json"]
        assert feed.json() == ["a", "b"]
