"""Retention of reported messages: the automatic purge every ``[reporting] purge_interval``,
and ``POST /commands/cleanup-messages``. As at the original, a
``delivery_report_retention_seconds`` <= 0 turns the automatic purge off, while a cleanup
call with no ``older_than_seconds`` then removes everything reported. Against a real SMTP
sink, a real report endpoint and the REST API over a socket."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from gmp_core import Config, NotFound, Service
from gmp_core.testing import SmtpSink, fast_tables, merge
from tests.receiver import ReportReceiver
from tests.support import account, message, wait_until

TOKEN = "retention-token-0123456789"
FAST_REPORTS = {"interval": 0, "retry_initial": 0.02, "retry_max": 0.05, "heartbeat_seconds": 0}


@pytest.fixture
async def receiver() -> AsyncIterator[ReportReceiver]:
    server = await ReportReceiver().start()
    yield server
    await server.stop()


Start = Callable[[int], Awaitable[Service]]


@pytest.fixture
async def reported_service(
    tmp_path: Path, sink: SmtpSink, receiver: ReportReceiver
) -> AsyncIterator[Start]:
    """``await reported_service(retention)``: a service with the REST API whose message ``a``
    was sent and its report acknowledged."""
    started: list[Service] = []

    async def start(retention: int) -> Service:
        tables = {
            "plugins": {"disable": []},
            "rest": {"port": 0},
            "token_auth": {"api_token": TOKEN},
            "proxy_sync": {"url": receiver.url},
            "reporting": {**FAST_REPORTS, "purge_interval": 0.05},
            "service": {"delivery_report_retention_seconds": retention},
        }
        service = Service(Config(merge(fast_tables(tmp_path), tables), environ={}))
        await service.start()
        started.append(service)
        await service.put_account(account(sink))
        await send_and_acknowledge(service)
        return service

    yield start
    for service in started:
        await service.stop()


async def send_and_acknowledge(service: Service) -> None:
    await service.add_messages([message("a")])

    async def acknowledged() -> bool:
        return (await service.get_message("a"))[0].reported_ts is not None

    await wait_until(acknowledged)


async def cleanup(service: Service, body: dict[str, Any] | None = None) -> Any:
    url = str(service.state["rest"].url)
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Token": TOKEN}) as http:
        answer = await http.post("/commands/cleanup-messages", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()


async def gone(service: Service, message_id: str) -> bool:
    try:
        await service.get_message(message_id)
    except NotFound:
        return True
    return False


@pytest.mark.parametrize("retention", [0, -1])
async def test_a_retention_of_zero_or_less_turns_the_automatic_purge_off(
    reported_service: Start, caplog: pytest.LogCaptureFixture, retention: int
) -> None:
    caplog.set_level(logging.INFO, logger="gmp.reporter")
    service = await reported_service(retention)
    assert "automatic retention purge off" in caplog.text
    assert await service.purge_expired() == 0  # what the retention loop runs
    assert not await gone(service, "a")
    # cleanup-messages with no older_than_seconds: everything reported, as the original
    assert await cleanup(service) == {"ok": True, "removed": 1}
    assert await gone(service, "a")
    result = await service.add_messages([message("a")])
    assert [r.reason for r in result.rejected] == ["already sent"]  # the tombstone stays


async def test_cleanup_without_an_age_removes_what_is_older_than_the_retention(
    reported_service: Start,
) -> None:
    service = await reported_service(3600)
    assert await cleanup(service, {}) == {"ok": True, "removed": 0}  # reported just now
    assert await service.purge_expired() == 0
    assert not await gone(service, "a")
    assert await cleanup(service, {"older_than_seconds": 0}) == {"ok": True, "removed": 1}
    assert await gone(service, "a")


async def test_a_positive_retention_purges_on_its_own(
    reported_service: Start,
) -> None:
    service = await reported_service(1)
    await wait_until(lambda: gone(service, "a"))  # by the loop, a second after the report
