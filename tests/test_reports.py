"""Delivery reports over proxy_sync (SPEC §4), against a real HTTP endpoint on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from gmp_core import DeliveryReport, NotFound, ReportReply, Service, hookimpl
from gmp_core.testing import SmtpSink
from tests.receiver import ReportReceiver
from tests.support import EventLog, ServiceFactory, account, message, wait_until


@pytest.fixture
async def receiver() -> AsyncIterator[ReportReceiver]:
    server = await ReportReceiver().start()
    yield server
    await server.stop()


FAST_REPORTS = {"interval": 0, "retry_initial": 0.02, "retry_max": 0.05, "heartbeat_seconds": 0}


async def reporting_service(
    make_service: ServiceFactory,
    sink: SmtpSink,
    receiver: ReportReceiver,
    *,
    plugins: Sequence[object] = (),
    proxy_sync: dict[str, Any] | None = None,
    **tables: dict[str, Any],
) -> Service:
    service = await make_service(
        plugins,
        proxy_sync={"url": receiver.url, **(proxy_sync or {})},
        reporting={**FAST_REPORTS, **tables.pop("reporting", {})},
        **tables,
    )
    await service.put_account(account(sink))
    return service


def ids_of(reports: list[dict[str, Any]]) -> set[str]:
    return {r["id"] for r in reports}


async def test_outcomes_are_posted_and_acknowledged(
    make_service: ServiceFactory, sink: SmtpSink, receiver: ReportReceiver
) -> None:
    sink.rcpt_replies["nobody@example.com"] = "550 5.1.1 User unknown"
    service = await reporting_service(make_service, sink, receiver)
    await service.add_messages([message("ok"), message("bad", to=["nobody@example.com"])])
    await receiver.wait(lambda r: ids_of(r.reported()) == {"ok", "bad"})

    by_id = {r["id"]: r for r in receiver.reported()}
    assert by_id["ok"]["status"] == "sent" and by_id["ok"]["sent_ts"] > 0
    assert by_id["ok"]["error"] is None and by_id["ok"]["account_id"] == "acc"
    assert by_id["ok"]["priority"] == 2
    assert by_id["bad"]["status"] == "error" and by_id["bad"]["error_code"] == 550
    assert "User unknown" in by_id["bad"]["error"] and by_id["bad"]["error_ts"] > 0
    # unix seconds as integers, as the API answers them (docs/api.md, Timestamps)
    assert type(by_id["ok"]["sent_ts"]) is int and type(by_id["bad"]["error_ts"]) is int
    assert receiver.posts[0].headers["Content-Type"] == "application/json"

    async def acknowledged() -> bool:
        records = [(await service.get_message(i))[0] for i in ("ok", "bad")]
        return all(r.reported_ts is not None for r in records)

    await wait_until(acknowledged)
    _, history = await service.get_message("ok")
    assert [e.kind for e in history] == ["queued", "sent"]


async def test_every_failure_is_retried_until_acknowledged(
    make_service: ServiceFactory, sink: SmtpSink, receiver: ReportReceiver, events: EventLog
) -> None:
    """Down, 500, too slow, ok:false: none acknowledges; then healthy. Every report arrives;
    repeats only of posts whose answer the proxy never had (the slow one)."""
    ids = [f"m{i}" for i in range(40)]
    await receiver.stop()  # down: connection refused
    service = await reporting_service(
        make_service, sink, receiver, proxy_sync={"timeout": 0.2}, reporting={"batch_size": 7}
    )
    await service.add_messages([message(i) for i in ids])
    await events.wait("report_failed")
    await receiver.start()
    for mode in ("error", "slow", "not_ok"):
        receiver.mode = mode
        seen = len(receiver.posts)
        await receiver.wait(lambda r, seen=seen: len(r.posts) > seen)
        record, _ = await service.get_message("m0")
        assert record.reported_ts is None, mode  # nothing marked before a real ack
    receiver.mode = "ok"
    receiver.release.set()
    await wait_until(lambda: all_reported(service, ids))
    assert ids_of(receiver.reported("sent")) == set(ids)  # none lost
    assert all(len(p.reports) <= 7 for p in receiver.posts)  # batches stay bounded


async def all_reported(service: Service, ids: list[str]) -> bool:
    records = [(await service.get_message(i))[0] for i in ids]
    return all(record.reported_ts is not None for record in records)


async def test_signature_verifies_with_the_documented_recipe(
    make_service: ServiceFactory, sink: SmtpSink, receiver: ReportReceiver
) -> None:
    from examples.client.signature import verify_signature

    service = await reporting_service(
        make_service, sink, receiver, proxy_sync={"secret": "s3cret", "token": "tok"}
    )
    await service.add_messages([message("a")])
    await receiver.wait(lambda r: bool(r.reported()))
    post = receiver.posts[0]
    assert post.headers["Authorization"] == "Bearer tok"
    header = post.headers["X-Gmp-Signature"]
    now = time.time()
    assert verify_signature("s3cret", header, post.body, now=now)
    assert not verify_signature("s3cret", header, post.body.replace(b'"a"', b'"b"'), now=now)
    assert not verify_signature("other", header, post.body, now=now)
    assert not verify_signature("s3cret", header, post.body, now=now + 3600)  # a replay


async def test_basic_auth_and_deferrals_when_asked(
    make_service: ServiceFactory, sink: SmtpSink, receiver: ReportReceiver
) -> None:
    replies = iter(["451 4.3.0 try later"])
    sink.data_reply = lambda envelope: next(replies, None)
    service = await reporting_service(
        make_service,
        sink,
        receiver,
        proxy_sync={"report_deferred": True, "user": "app", "password": "pw"},
    )
    await service.add_messages([message("later")])
    await receiver.wait(lambda r: bool(r.reported("sent")))
    statuses = [r["status"] for r in receiver.reported()]
    assert statuses == ["deferred", "sent"]
    deferred = receiver.reported("deferred")[0]
    assert deferred["error_code"] == 451 and "try later" in deferred["error"]
    assert deferred["deferred_ts"] > 0 and deferred["sent_ts"] is None
    assert receiver.posts[0].headers["Authorization"].startswith("Basic ")


async def test_heartbeat_when_idle(
    make_service: ServiceFactory, sink: SmtpSink, receiver: ReportReceiver
) -> None:
    await reporting_service(make_service, sink, receiver, reporting={"heartbeat_seconds": 0.05})
    await receiver.wait(lambda r: len(r.posts) >= 2)
    assert all(p.body == b'{"delivery_report":[]}' for p in receiver.posts)


async def test_queued_reply_asks_for_the_next_batch_at_once(
    make_service: ServiceFactory, sink: SmtpSink, receiver: ReportReceiver
) -> None:
    """With a long interval, only `queued` explains three posts in a row."""
    receiver.mode = "slow"  # hold the first post until everything is sent
    receiver.extra = {"queued": 3}
    service = await reporting_service(
        make_service, sink, receiver, reporting={"batch_size": 2, "interval": 600}
    )
    await service.add_messages([message("m0")])
    await receiver.wait(lambda r: len(r.posts) == 1)
    await service.add_messages([message(f"m{i}") for i in range(1, 5)])
    await sink.wait_for(5)
    receiver.mode = "ok"
    receiver.release.set()
    await receiver.wait(lambda r: ids_of(r.reported()) == {f"m{i}" for i in range(5)})
    assert all(len(p.reports) <= 2 for p in receiver.posts)


async def test_reply_fields_are_read(receiver: ReportReceiver) -> None:
    from gmp_proxy_sync import ProxySyncReporter, ProxySyncSettings

    reporter = ProxySyncReporter(ProxySyncSettings(url=receiver.url))
    receiver.extra = {"queued": 0, "next_sync_after": 1_900_000_000}
    reply = await reporter.report([])
    assert reply == ReportReply(acknowledged=True, more_now=False, not_before=1_900_000_000.0)
    receiver.extra = {"queued": 12, "next_sync_after": "soon"}
    assert await reporter.report([]) == ReportReply(acknowledged=True, more_now=True)
    await reporter.close()


# What real clients answer: the original's example client, a Genropy application, a bare
# framework view, a web page. Any 2xx acknowledges unless its JSON says "ok": false.
ANSWERS_OF_REAL_CLIENTS = [
    (200, {"status": "ok", "processed": 1}),
    (200, {"sent": 12, "error": 1, "deferred": 0}),
    (200, {}),
    (200, ""),
    (200, "<html><body>thanks</body></html>"),
    (200, {"ok": True}),
    (202, ["a", "list"]),
    (204, ""),
]


@pytest.mark.parametrize("reply", ANSWERS_OF_REAL_CLIENTS)
async def test_any_2xx_acknowledges_by_default(reply: tuple[int, Any]) -> None:
    assert await reporter_answered(reply) == ReportReply(acknowledged=True)


@pytest.mark.parametrize(
    "reply",
    [(200, {"ok": False}), (200, {"ok": False, "queued": 3}), (500, {"ok": True}), (302, "")],
)
async def test_ok_false_or_not_2xx_is_a_refusal(reply: tuple[int, Any]) -> None:
    assert await reporter_answered(reply) == ReportReply(acknowledged=False)


@pytest.mark.parametrize(
    ("reply", "acknowledged"),
    [
        ((200, {"ok": True}), True),
        ((200, {"status": "ok", "processed": 1}), False),
        ((200, ""), False),
        ((200, "<html></html>"), False),
        ((200, {"ok": "yes"}), False),
    ],
)
async def test_the_strict_rule_wants_ok_true(reply: tuple[int, Any], acknowledged: bool) -> None:
    answer = await reporter_answered(reply, ack="json_ok")
    assert answer == ReportReply(acknowledged=acknowledged)


async def reporter_answered(reply: tuple[int, Any], **settings: Any) -> ReportReply:
    """What the proxy_sync reporter makes of one answer of a real HTTP endpoint."""
    from gmp_proxy_sync import ProxySyncReporter, ProxySyncSettings

    from gmp_core.testing import ReportReceiver as Endpoint

    endpoint = await Endpoint().start()
    endpoint.reply = reply
    reporter = ProxySyncReporter(ProxySyncSettings(url=endpoint.url, **settings))
    try:
        return await reporter.report([])
    finally:
        await reporter.close()
        await endpoint.stop()


class FlakyReporter:
    """A second reporter, as a third party would write one: refuses until told otherwise."""

    __name__ = "test-flaky-reporter"
    report_deferred = False

    def __init__(self) -> None:
        self.healthy = False
        self.received: list[str] = []

    @hookimpl
    def gmp_register_reporters(self, register: Any, service: Service) -> None:
        register("flaky", self)

    async def report(self, reports: Sequence[DeliveryReport]) -> ReportReply:
        if not self.healthy:
            raise ConnectionError("flaky is down")
        self.received += [r.id for r in reports]
        return ReportReply(acknowledged=True)

    async def close(self) -> None:
        pass


async def test_two_reporters_acknowledge_independently(
    make_service: ServiceFactory, sink: SmtpSink, receiver: ReportReceiver, events: EventLog
) -> None:
    flaky = FlakyReporter()
    service = await reporting_service(make_service, sink, receiver, plugins=[flaky])
    await service.add_messages([message("a"), message("b")])
    await receiver.wait(lambda r: ids_of(r.reported()) == {"a", "b"})
    await events.wait("report_failed", count=2)
    record, _ = await service.get_message("a")
    assert record.reported_ts is None  # flaky has not acknowledged
    flaky.healthy = True
    service.run_now()
    await wait_until(lambda: all_reported(service, ["a", "b"]))
    assert sorted(flaky.received) == ["a", "b"]
    assert sorted(ids_of(receiver.reported())) == ["a", "b"]


async def test_one_process_at_a_time_posts_the_reports(
    make_service: ServiceFactory, sink: SmtpSink, receiver: ReportReceiver
) -> None:
    """Two services on one database, as two processes would be: the holder of the reporter's
    lease posts every report once; the other posts nothing, even told to run now while the
    holder's post is under way; when the holder stops, the other takes over at once."""
    # The holder learns of the other's outcomes by looking (poll_interval), not by a wake.
    services = [
        await reporting_service(make_service, sink, receiver, reporting={"poll_interval": 0.05})
        for _ in range(2)
    ]
    loops = [service.reporting.loops[0] for service in services]

    async def both_turned() -> bool:
        return all(loop.heartbeat for loop in loops)

    await wait_until(both_turned)
    assert sorted(loop.leading for loop in loops) == [False, True]
    leader, follower = sorted(zip(loops, services, strict=True), key=lambda p: not p[0].leading)

    receiver.mode = "slow"  # the holder's first post waits for release
    await services[0].add_messages([message("a")])
    await services[1].add_messages([message("b")])
    await receiver.wait(lambda r: len(r.posts) == 1)
    turned = follower[0].heartbeat

    async def follower_turned() -> bool:
        return follower[0].heartbeat > turned

    follower[1].run_now()
    await wait_until(follower_turned)
    receiver.mode = "ok"
    receiver.release.set()
    await wait_until(lambda: all_reported(services[0], ["a", "b"]))

    await leader[1].stop()  # gives the lease back

    async def took_over() -> bool:
        return follower[0].leading

    follower[1].run_now()
    await wait_until(took_over)
    await follower[1].add_messages([message("c")])
    await wait_until(lambda: all_reported(follower[1], ["c"]))
    reported = [r["id"] for r in receiver.reported()]
    assert sorted(reported) == ["a", "b", "c"]  # each once


async def test_retention_purges_only_acknowledged_messages(
    make_service: ServiceFactory, sink: SmtpSink, receiver: ReportReceiver
) -> None:
    receiver.mode = "not_ok"
    service = await reporting_service(
        make_service,
        sink,
        receiver,
        service={"delivery_report_retention_seconds": 1},  # <= 0 would turn the loop off
        reporting={"purge_interval": 0.05},
    )
    await service.add_messages([message("a")])
    await receiver.wait(lambda r: len(r.posts) >= 2)
    assert await service.cleanup_messages(0) == 0  # sent, but not acknowledged
    await service.get_message("a")
    receiver.mode = "ok"

    async def purged() -> bool:
        try:
            await service.get_message("a")
        except NotFound:
            return True
        return False

    await wait_until(purged)  # by the retention loop, once acknowledged
    result = await service.add_messages([message("a")])
    assert [r.reason for r in result.rejected] == ["already sent"]  # the tombstone


async def test_run_now_cuts_the_back_off_short_and_suspend_keeps_reporting(
    make_service: ServiceFactory, sink: SmtpSink, receiver: ReportReceiver, events: EventLog
) -> None:
    receiver.mode = "error"
    service = await reporting_service(
        make_service, sink, receiver, reporting={"retry_initial": 600, "retry_max": 600}
    )
    await service.add_messages([message("a")])
    await receiver.wait(lambda r: len(r.posts) == 1)
    await events.wait("report_failed")
    await service.set_active(False)  # sending suspended; reporting goes on
    receiver.mode = "ok"
    service.run_now()  # without it the next try is ten minutes away
    await receiver.wait(lambda r: len(r.posts) == 2)
    assert ids_of(receiver.posts[1].reports) == {"a"}


async def test_rejections_and_forced_account_deletion_are_recorded(
    make_service: ServiceFactory, sink: SmtpSink, receiver: ReportReceiver
) -> None:
    sink.hold = asyncio.Event()
    service = await reporting_service(make_service, sink, receiver)
    await service.put_account(account(sink, id="other"))
    await service.add_messages([message("a")])
    await sink.wait_held(1)
    result = await service.add_messages([message("a")])
    assert [r.reason for r in result.rejected] == ["in flight"]
    _, history = await service.get_message("a")
    assert [(e.kind, e.detail) for e in history][-1] == ("rejected", "in flight")
    await service.set_active(False)
    await service.add_messages([message("b", account_id="other")])
    await service.delete_account("other", force=True)
    await receiver.wait(lambda r: "b" in ids_of(r.reported("error")))
    assert receiver.reported("error")[0]["error"] == "account deleted"
    sink.hold.set()
