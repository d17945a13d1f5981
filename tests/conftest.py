"""Shared fixtures, under the short names our tests use, over the pytest plugin that ships
with the proxy (gmp_core.testing): a real SMTP sink, services on a temporary SQLite, an event
log; and schemas of their own on the real PostgreSQL of 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest

from gmp_core import Service
from gmp_core.testing import EventLog, ServiceStarter, SmtpSink


@pytest.fixture
def sink(gmp_smtp_sink: SmtpSink) -> SmtpSink:
    return gmp_smtp_sink


@pytest.fixture(params=[False, True], ids=["one-by-one", "pipelined"])
async def either_sink(request: pytest.FixtureRequest) -> AsyncIterator[SmtpSink]:
    """A sink with and without PIPELINING, for modules whose tests must pass both ways: they
    override ``gmp_smtp_sink`` (the sink services send to) with it (see test_failures.py)."""
    server = await SmtpSink(pipelining=request.param).start()
    yield server
    await server.stop()


@pytest.fixture
def events(gmp_events: EventLog) -> EventLog:
    return gmp_events


@pytest.fixture
def make_service(make_gmp_service: ServiceStarter) -> ServiceStarter:
    """``await make_service(plugins=[...], service={...}, ...)``: a started service on the
    test's database (the same one for every call), stopped at the end."""
    return make_gmp_service


@pytest.fixture
def service(gmp_service: Service) -> Service:
    """A running service with account ``acc`` pointing at the sink (plain SMTP)."""
    return gmp_service


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
    """A fresh, empty schema for one test: a URL whose connections use only it. A test that
    also starts a service (``make_service``) lists this fixture first: fixtures are torn down
    in reverse order, and dropping the schema while the service still holds a transaction in
    it blocks the event loop that would end that transaction (the test hangs)."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    run_async(lambda: _admin(f"CREATE SCHEMA {schema}", postgres_database))
    yield f"{postgres_database}?search_path={schema}"
    run_async(lambda: _admin(f"DROP SCHEMA {schema} CASCADE", postgres_database))
