"""Shared fixtures: a real SMTP sink, services on a temporary SQLite, an event log, and
schemas of their own on the real PostgreSQL of 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest

from gmp_core import Config, Service
from gmp_core.testing import SmtpSink
from tests.support import EventLog, ServiceFactory, account, base_tables, merge


@pytest.fixture
async def sink() -> AsyncIterator[SmtpSink]:
    server = await SmtpSink().start()
    yield server
    await server.stop()


@pytest.fixture(params=[False, True], ids=["one-by-one", "pipelined"])
async def either_sink(request: pytest.FixtureRequest) -> AsyncIterator[SmtpSink]:
    """A sink with and without PIPELINING: modules whose tests must pass both ways say
    ``sink = either_sink``-style overrides (see test_failures.py)."""
    server = await SmtpSink(pipelining=request.param).start()
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


# The PostgreSQL the tests use; `.ci/run` starts the local one when it is down. Tests that
# need it fail (never skip) when it cannot be reached.
POSTGRES_ADMIN_URL = os.environ.get(
    "GMP_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
POSTGRES_TEST_DATABASE = "gmp_test"
T = TypeVar("T")


def run_async(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code, even inside a running event loop (a
    fixture asked for by an async fixture): on a thread with a loop of its own."""
    with ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(asyncio.run, make()).result()


async def _admin(sql: str, database_url: str = POSTGRES_ADMIN_URL) -> None:
    import asyncpg

    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def postgres_database() -> str:
    """URL of the tests' database, created when missing."""

    async def create() -> None:
        with contextlib.suppress(Exception):  # it exists; any other trouble shows below
            await _admin(f"CREATE DATABASE {POSTGRES_TEST_DATABASE}")

    run_async(create)
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + POSTGRES_TEST_DATABASE
    run_async(lambda: _admin("SELECT 1", url))  # unreachable: fail here, loudly
    return url


@pytest.fixture
def postgres_url(postgres_database: str) -> Iterator[str]:
    """A fresh, empty schema for one test: a URL whose connections use only it."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    run_async(lambda: _admin(f"CREATE SCHEMA {schema}", postgres_database))
    yield f"{postgres_database}?search_path={schema}"
    run_async(lambda: _admin(f"DROP SCHEMA {schema} CASCADE", postgres_database))
