"""Starting and stopping the REST server: binding, the open-API guard, settings."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest
from gmp_rest import RestSettings

from gmp_core import Config, ConfigError, Service
from tests.rest.rest_support import TOKEN, ServiceFactory, base_url, rest_config


async def test_listens_on_the_bound_port(service: Service) -> None:
    server = service.state["rest"]
    assert server.port > 0
    assert base_url(service) == f"http://127.0.0.1:{server.port}"


async def test_open_api_refuses_a_public_address(tmp_path: Path) -> None:
    service = Service(rest_config(tmp_path, rest={"host": "0.0.0.0"}, token_auth={"api_token": ""}))
    with pytest.raises(ConfigError, match=r"api_token.*GMP_API_TOKEN") as info:
        await service.start()
    assert "0.0.0.0" in str(info.value)
    assert "rest" not in service.state


async def test_open_api_on_loopback_is_allowed(start_service: ServiceFactory) -> None:
    service = await start_service(token_auth={"api_token": ""}, rest={"host": "localhost"})
    async with httpx.AsyncClient(base_url=base_url(service)) as http:
        assert (await http.get("/status")).status_code == 200


async def test_public_address_with_a_token(start_service: ServiceFactory) -> None:
    service = await start_service(rest={"host": "0.0.0.0"})
    port = service.state["rest"].port
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        assert (await http.get("/status")).status_code == 401
        assert (await http.get("/status", headers={"X-API-Token": TOKEN})).status_code == 200


async def test_port_in_use_fails_start(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        service = Service(rest_config(tmp_path, rest={"port": port}))
        with pytest.raises(ConfigError, match=rf"127\.0\.0\.1:{port}.*in use"):
            await service.start()
        assert "rest" not in service.state


async def test_stop_closes_the_port(tmp_path: Path) -> None:
    service = Service(rest_config(tmp_path))
    await service.start()
    url = base_url(service)
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Token": TOKEN}) as http:
        assert (await http.get("/status")).status_code == 200  # leaves a keep-alive connection
        await service.stop()
        assert "rest" not in service.state
    async with httpx.AsyncClient(base_url=url) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get("/health")


def test_settings_defaults_and_legacy_environment() -> None:
    defaults = Config({}, environ={}).register("rest", RestSettings)
    assert isinstance(defaults, RestSettings)
    assert (defaults.host, defaults.port, defaults.max_body_bytes) == (
        "127.0.0.1",
        8000,
        10 * 1024 * 1024,
    )
    assert defaults.ready_timeout == 2.0
    legacy = Config({}, environ={"GMP_HOST": "::1", "GMP_PORT": "9000"}).register(
        "rest", RestSettings
    )
    assert isinstance(legacy, RestSettings)
    assert (legacy.host, legacy.port) == ("::1", 9000)
    with pytest.raises(ConfigError, match="GMP_REST_PORT"):
        Config({}, environ={"GMP_REST_PORT": "http"}).register("rest", RestSettings)


async def test_suspension_survives_a_restart(tmp_path: Path) -> None:
    for active_at_start in (True, False):
        service = Service(rest_config(tmp_path))
        await service.start()
        try:
            async with httpx.AsyncClient(
                base_url=base_url(service), headers={"X-API-Token": TOKEN}
            ) as http:
                assert (await http.get("/status")).json()["active"] is active_at_start
                await http.post("/commands/suspend")
        finally:
            await service.stop()
