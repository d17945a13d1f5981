"""Bundled REST API: the HTTP layer of SPEC §2, served by hypercorn in the service's loop.

Settings live in ``[rest]``. With no API token configured the API is open, so it refuses to
listen anywhere but on loopback.
"""

from __future__ import annotations

from collections.abc import Callable

from gmp_core import ConfigError, Service, Settings, hookimpl, setting
from gmp_rest.app import create_app
from gmp_rest.server import RestServer, is_loopback

__all__ = ["RestServer", "RestSettings", "create_app"]

MiB = 1024 * 1024


class RestSettings(Settings):
    host: str = setting(
        "127.0.0.1", env="GMP_HOST", min_length=1, description="address to listen on"
    )
    port: int = setting(
        8000, env="GMP_PORT", ge=0, le=65535, description="TCP port (0: any free port)"
    )
    max_body_bytes: int = setting(10 * MiB, ge=1, description="larger request bodies get 413")
    keep_alive_timeout: float = setting(
        5.0, gt=0, description="idle keep-alive connections close after this"
    )
    graceful_timeout: float = setting(
        5.0, ge=0, description="at shutdown, how long requests in progress may take (seconds)"
    )
    access_log: bool = setting(False, description="log every request (logger gmp.rest.access)")
    read_timeout: float = setting(
        30.0, gt=0, description="a client silent this long is disconnected (seconds)"
    )
    body_timeout: float = setting(
        30.0, gt=0, description="a request body must arrive whole within this (seconds; 408)"
    )
    max_header_bytes: int = setting(
        16 * 1024, ge=1024, description="request line and headers larger than this are refused"
    )
    keep_alive_max_requests: int = setting(
        1000, ge=1, description="requests one keep-alive connection may carry"
    )
    ready_timeout: float = setting(
        2.0, gt=0, description="GET /ready fails when the store takes longer to answer (seconds)"
    )
    docs_public: bool = setting(
        True,
        description="/docs, /redoc and /openapi.json open to all (false: they need the token "
        "too); every call made from the pages needs the token either way",
    )


@hookimpl
def gmp_register_settings(register: Callable[[str, type[Settings]], None]) -> None:
    register("rest", RestSettings)


@hookimpl
def gmp_check_config(service: Service) -> None:
    check_exposure(service, service.config.section("rest").host)


@hookimpl
async def gmp_startup(service: Service) -> None:
    settings: RestSettings = service.config.section("rest")
    service.state["rest"] = await RestServer.start(
        create_app(service),
        settings.host,
        settings.port,
        keep_alive_timeout=settings.keep_alive_timeout,
        graceful_timeout=settings.graceful_timeout,
        access_log=settings.access_log,
        read_timeout=settings.read_timeout,
        max_header_bytes=settings.max_header_bytes,
        keep_alive_max_requests=settings.keep_alive_max_requests,
    )


@hookimpl
async def gmp_shutdown(service: Service) -> None:
    server: RestServer | None = service.state.pop("rest", None)
    if server is not None:
        await server.stop()


def check_exposure(service: Service, host: str) -> None:
    """An API that lets anonymous callers in may only listen on loopback."""
    if is_loopback(host) or service.authenticate({}) is None:
        return
    raise ConfigError(
        f"refusing to listen on {host} without an API token: set [token_auth] api_token "
        "(GMP_API_TOKEN) or bind to 127.0.0.1 ([rest] host, GMP_HOST)"
    )
