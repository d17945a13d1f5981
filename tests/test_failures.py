"""Failures: temporary ones retry with back-off, permanent ones end as error with the code."""

from __future__ import annotations

import asyncio
import time

import pytest

from gmp_core import Service
from gmp_core.service import AccountBusy, NotFound
from gmp_core.testing import SmtpSink
from tests.support import EventLog, ServiceFactory, account, message, status_of


@pytest.fixture
def gmp_smtp_sink(either_sink: SmtpSink) -> SmtpSink:
    """Every test here runs against a server that pipelines and one that does not."""
    return either_sink


async def test_4xx_reply_is_retried_later(
    service: Service, sink: SmtpSink, events: EventLog
) -> None:
    replies = iter(["451 4.3.0 Temporary local problem"])
    sink.data_reply = lambda envelope: next(replies, None)
    await service.add_messages([message("m1")])

    [deferred] = await events.wait("deferred", "m1")
    assert deferred.code == 451 and deferred.data["attempt"] == 1
    assert deferred.data["retry_at"] >= deferred.ts + 0.1  # the configured back-off
    await events.wait("sent", "m1")
    record, _ = await service.get_message("m1")
    assert record.status == "sent" and record.attempts == 1
    assert len(sink.mails) == 1


async def test_5xx_reply_ends_as_error_with_the_code(
    service: Service, sink: SmtpSink, events: EventLog
) -> None:
    sink.data_reply = lambda envelope: "554 5.7.1 Message rejected as spam"
    await service.add_messages([message("m1")])
    [error] = await events.wait("error", "m1")
    assert error.code == 554
    record, _ = await service.get_message("m1")
    assert record.status == "error" and record.error_ts is not None
    assert record.error == "554 5.7.1 Message rejected as spam"


async def test_retries_run_out(
    make_service: ServiceFactory, sink: SmtpSink, events: EventLog
) -> None:
    service = await make_service(service={"retry_delays": [0.05, 0.05]})
    await service.put_account(account(sink))
    sink.data_reply = lambda envelope: "450 4.2.1 Mailbox busy"
    await service.add_messages([message("m1")])
    [error] = await events.wait("error", "m1")
    assert events.kinds("m1") == ["queued", "deferred", "deferred", "error"]
    assert error.detail == "gave up after 3 attempts: 450 4.2.1 Mailbox busy"


async def test_server_down_then_up_delivers(
    service: Service, sink: SmtpSink, events: EventLog
) -> None:
    await sink.stop()
    await service.add_messages([message("m1")])
    [deferred] = await events.wait("deferred", "m1")
    assert "connection failed" in deferred.detail
    await sink.start()
    await events.wait("sent", "m1")
    assert [m.gmp_id for m in sink.mails] == ["m1"]


async def test_server_dropping_idle_connections_is_survived(
    service: Service, sink: SmtpSink, events: EventLog
) -> None:
    await service.add_messages([message("m1")])
    await events.wait("sent", "m1")
    await sink.stop()  # drops the pooled connection
    await sink.start()
    await service.add_messages([message("m2")])
    await events.wait("sent", "m2")
    assert events.kinds("m2") == ["queued", "sent"]  # reconnected at once, no retry needed


async def test_421_closes_the_connection_and_retries(
    service: Service, sink: SmtpSink, events: EventLog
) -> None:
    replies = iter(["421 4.3.2 Service shutting down"])
    sink.data_reply = lambda envelope: next(replies, None)
    await service.add_messages([message("m1")])
    await events.wait("sent", "m1")
    assert events.kinds("m1") == ["queued", "deferred", "sent"]
    assert sink.connections == 2


async def test_recipients_refused_one_by_one_are_reported(
    service: Service, sink: SmtpSink, events: EventLog
) -> None:
    sink.rcpt_replies = {"gone@example.com": "550 5.1.1 User unknown"}
    await service.add_messages([message("m1", to=["ok@example.com", "gone@example.com"])])
    [sent] = await events.wait("sent", "m1")
    assert sent.data["refused"] == {"gone@example.com": "550 5.1.1 User unknown"}
    assert sink.mails[0].rcpt_tos == ["ok@example.com"]


async def test_all_recipients_refused_permanently_is_an_error(
    service: Service, sink: SmtpSink, events: EventLog
) -> None:
    sink.rcpt_replies = {"rcpt@example.com": "550 5.1.1 User unknown"}
    await service.add_messages([message("m1")])
    [error] = await events.wait("error", "m1")
    assert error.code == 550 and "rcpt@example.com" in error.detail
    assert error.data["refused"] == {"rcpt@example.com": "550 5.1.1 User unknown"}


async def test_all_recipients_refused_temporarily_is_retried(
    service: Service, sink: SmtpSink, events: EventLog
) -> None:
    sink.rcpt_replies = {"rcpt@example.com": "452 4.2.2 Mailbox full"}
    await service.add_messages([message("m1")])
    await events.wait("deferred", "m1")
    sink.rcpt_replies = {}
    await events.wait("sent", "m1")


async def test_one_bad_message_does_not_block_the_others(
    service: Service, sink: SmtpSink, events: EventLog
) -> None:
    sink.data_reply = lambda e: "554 5.6.0 bad" if b"poison" in e.content else None
    await service.add_messages([message("poison"), *(message(f"m{i}") for i in range(5))])
    await sink.wait_for(5)
    await events.wait("error", "poison")


async def test_rate_limit_per_minute_defers(
    make_service: ServiceFactory, sink: SmtpSink, events: EventLog
) -> None:
    service = await make_service()
    await service.put_account(account(sink, limit_per_minute=3))
    started = time.time()
    await service.add_messages([message(f"m{i}") for i in range(5)])
    deferred = await events.wait("deferred", count=2)
    await sink.wait_for(3)
    assert len(sink.mails) == 3
    for event in deferred:
        assert event.data["reason"] == "rate_limit"
        # The window frees up a minute after the first sends.
        assert started + 59 <= event.data["retry_at"] <= time.time() + 61
        assert await status_of(service, event.message_id) == "scheduled"


async def test_rate_limit_reject_ends_as_error(
    make_service: ServiceFactory, sink: SmtpSink, events: EventLog
) -> None:
    service = await make_service()
    await service.put_account(account(sink, limit_per_minute=2, limit_behavior="reject"))
    await service.add_messages([message(f"m{i}") for i in range(4)])
    errors = await events.wait("error", count=2)
    await sink.wait_for(2)
    assert {e.detail for e in errors} == {"rate_limit_exceeded"}
    for event in errors:
        record, _ = await service.get_message(event.message_id)
        assert record.status == "error" and record.error == "rate_limit_exceeded"


async def test_rate_limit_counts_survive_a_restart(
    make_service: ServiceFactory, sink: SmtpSink, events: EventLog
) -> None:
    first = await make_service()
    await first.put_account(account(sink, limit_per_minute=2))
    await first.add_messages([message("m0"), message("m1")])
    await sink.wait_for(2)
    await first.stop()
    second = await make_service()  # same database
    await second.add_messages([message("m2")])
    [deferred] = await events.wait("deferred", "m2")
    assert deferred.data["reason"] == "rate_limit"


async def test_account_with_unsent_messages_is_deleted_only_by_force(service: Service) -> None:
    await service.set_active(False)
    await service.add_messages([message("m1")])
    with pytest.raises(AccountBusy):
        await service.delete_account("acc")
    await service.delete_account("acc", force=True)
    record, history = await service.get_message("m1")
    assert record.status == "error" and record.error == "account deleted"
    assert [e.kind for e in history] == ["queued", "error"]
    with pytest.raises(NotFound):
        await service.delete_account("acc")


async def test_duplicate_id_replaces_a_queued_message(
    make_service: ServiceFactory, sink: SmtpSink
) -> None:
    service = await make_service()
    await service.put_account(account(sink, max_connections=1))
    await service.set_active(False)
    await service.add_messages([message("m1", subject="first"), message("m2")])
    result = await service.add_messages([message("m1", subject="corrected")])
    assert result.queued == 1
    await service.set_active(True)
    mails = await sink.wait_for(2)
    assert [m.gmp_id for m in mails] == ["m1", "m2"]  # kept its place in the queue
    assert mails[0].message["Subject"] == "corrected"


async def test_duplicate_id_in_flight_and_already_sent(
    service: Service, sink: SmtpSink, events: EventLog
) -> None:
    sink.hold = asyncio.Event()
    await service.add_messages([message("m1")])
    await sink.wait_held(1)
    result = await service.add_messages([message("m1")])
    assert [(r.id, r.reason) for r in result.rejected] == [("m1", "in flight")]
    sink.hold.set()
    await events.wait("sent", "m1")
    result = await service.add_messages([message("m1"), message("m2")])
    assert result.queued == 1
    assert [(r.id, r.reason) for r in result.rejected] == [("m1", "already sent")]


async def test_already_sent_survives_cleanup(
    service: Service, sink: SmtpSink, events: EventLog
) -> None:
    await service.add_messages([message("m1")])
    await events.wait("sent", "m1")
    deleted = await service.delete_messages(["m1"])
    assert deleted.removed == ["m1"]
    result = await service.add_messages([message("m1")])
    assert [(r.id, r.reason) for r in result.rejected] == [("m1", "already sent")]
