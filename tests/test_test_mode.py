"""``[service] test_mode`` (the original's ``GMP_TEST_MODE``): nothing is sent until
``POST /commands/run-now`` asks, then everything due is, as at the original."""

from __future__ import annotations

import logging

import pytest

from gmp_core import Service
from gmp_core.testing import SmtpSink
from tests.support import EventLog, ServiceFactory, account, message, status_of, wait_until


async def a_full_claim_cycle(service: Service) -> None:
    """Return once the claim loop went round at least once after this call: whatever was
    queued before had its chance to be claimed."""
    dispatcher = service.dispatcher
    started = dispatcher.heartbeat

    async def went_round() -> bool:
        return dispatcher.heartbeat > started

    await wait_until(went_round)  # an iteration began after the call ...
    began = dispatcher.heartbeat

    async def finished() -> bool:
        return dispatcher.heartbeat > began

    await wait_until(finished)  # ... and ended: the next one began


async def test_messages_wait_for_run_now_in_test_mode(
    make_service: ServiceFactory, sink: SmtpSink, events: EventLog, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="gmp.service"):
        service = await make_service(service={"test_mode": True})
    assert "test mode: only when POST /commands/run-now asks" in caplog.text
    await service.put_account(account(sink))
    await service.add_messages([message("m1"), message("urgent", priority=0)])
    await a_full_claim_cycle(service)
    assert await status_of(service, "m1") == "queued"
    assert await status_of(service, "urgent") == "queued"
    assert sink.mails == []

    service.run_now()
    await events.wait("sent", "m1")
    await events.wait("sent", "urgent")

    await service.add_messages([message("m2")])  # the run-now was spent: m2 waits again
    await a_full_claim_cycle(service)
    assert await status_of(service, "m2") == "queued"
    assert len(sink.mails) == 2
    service.run_now()
    await events.wait("sent", "m2")


async def test_without_test_mode_messages_go_at_once(
    make_service: ServiceFactory, sink: SmtpSink, events: EventLog
) -> None:
    service = await make_service()
    await service.put_account(account(sink))
    await service.add_messages([message("m1")])
    await events.wait("sent", "m1")
