"""REST API fixtures: a real service on a temporary SQLite, talked to over a real socket.

Nothing here depends on delivery: accounts point at a closed port of 127.0.0.1, and tests that
need messages to stay ``queued`` suspend sending first.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gmp_core import Service
from tests.rest.rest_support import (
    TOKEN,
    MemoryVolumes,
    ServiceFactory,
    account,
    base_url,
    rest_config,
)


@pytest.fixture
async def start_service(tmp_path: Path) -> AsyncIterator[ServiceFactory]:
    """``await start_service(rest={...})``: a started service, stopped at the end."""
    started: list[Service] = []

    async def factory(*plugins: object, **tables: dict[str, Any]) -> Service:
        service = Service(rest_config(tmp_path, **tables), plugins=plugins)
        await service.start()
        started.append(service)
        return service

    yield factory
    for service in reversed(started):
        await service.stop()


@pytest.fixture
async def service(start_service: ServiceFactory) -> Service:
    return await start_service(MemoryVolumes())


@pytest.fixture
async def client(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    """An authenticated client of ``service``."""
    async with httpx.AsyncClient(
        base_url=base_url(service), headers={"X-API-Token": TOKEN}
    ) as http:
        yield http


@pytest.fixture
async def anonymous(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url(service)) as http:
        yield http


@pytest.fixture
async def suspended(client: httpx.AsyncClient) -> httpx.AsyncClient:
    """The client, with sending suspended and account ``acc`` in place: messages stay queued."""
    assert (await client.post("/commands/suspend")).json() == {"ok": True, "active": False}
    assert (await client.post("/account", json=account())).status_code == 200
    return client
