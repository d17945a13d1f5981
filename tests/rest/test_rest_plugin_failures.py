"""A plugin failing inside an API request: that request fails with 500, the service stays up."""

from __future__ import annotations

from collections.abc import Mapping

import httpx
import pytest

from gmp_core import Config, Principal, hookimpl
from tests.rest.rest_support import TOKEN, ServiceFactory, base_url


class FlakyDirectory:
    """An auth plugin whose directory lookup breaks for one kind of request."""

    __name__ = "flaky-directory"

    @hookimpl(tryfirst=True)
    def gmp_authenticate(self, headers: Mapping[str, str], config: Config) -> Principal | None:
        if "x-directory-user" in headers:
            raise ConnectionError("directory unreachable")
        return None  # token_auth decides


async def test_a_failing_auth_plugin_fails_only_that_request(
    start_service: ServiceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    service = await start_service(FlakyDirectory())
    async with httpx.AsyncClient(base_url=base_url(service)) as http:
        broken = await http.get("/status", headers={"X-Directory-User": "ann"})
        assert broken.status_code == 500
        assert broken.json() == {"ok": False, "error": "internal error"}
        # Logged with its traceback, which names the plugin.
        assert "directory unreachable" in caplog.text
        assert "raised by plugin 'flaky-directory' in gmp_authenticate" in caplog.text

        assert (await http.get("/health")).json() == {"ok": True, "status": "ok"}
        fine = await http.get("/status", headers={"X-API-Token": TOKEN})
        assert fine.status_code == 200 and fine.json()["ok"] is True
