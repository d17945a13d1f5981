"""gmp_register_routes: plugins add GET endpoints to the API, public or authenticated."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from gmp_core import Service, hookimpl
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
