"""Shared fixtures: a real SMTP sink, services on a temporary SQLite, an event log."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from gmp_core import Config, Service
from gmp_core.testing import SmtpSink
from tests.support import EventLog, ServiceFactory, account, base_tables, merge


@pytest.fixture
async def sink() -> AsyncIterator[SmtpSink]:
    server = await SmtpSink().start()
    yield server
    await server.stop()


@pytest.fixture
def events() -> EventLog:
    return EventLog()


@pytest.fixture
async def make_service(tmp_path: Path, events: EventLog) -> AsyncIterator[ServiceFactory]:
    """``await make_service(plugins=[...], service={...}, ...)``: a started service on the
    test's database (the same one for every call), stopped at the end."""
    started: list[Service] = []

    async def factory(plugins: Sequence[object] = (), **tables: dict[str, Any]) -> Service:
        config = Config(merge(base_tables(tmp_path), tables), environ={})
        service = Service(config, plugins=[events, *plugins])
        await service.start()
        started.append(service)
        return service

    yield factory
    for service in reversed(started):
        if service.started_at is not None:
            await service.stop()


@pytest.fixture
async def service(make_service: ServiceFactory, sink: SmtpSink) -> Service:
    """A running service with account ``acc`` pointing at the sink (plain SMTP)."""
    svc = await make_service()
    await svc.put_account(account(sink))
    return svc
