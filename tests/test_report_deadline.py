"""Report posts have a total deadline, the report lease is kept while one is under way, and a
report loop that stops beating shows in /health.

The endpoint is a real HTTP server on 127.0.0.1 that answers ``200`` with a
``Content-Length`` at once and then trickles the body, one byte at a time: httpx's own
timeout (between two reads) never fires on it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from gmp_core import Config, DeliveryReport, Event, ReportReply, Service, hookimpl
from gmp_core.testing import fast_tables, merge
from tests.support import EventLog, ServiceFactory, account, message, wait_until

BODY = b'{"ok": true}' + b" " * 88  # a valid answer, if one ever read all of it


class TrickleServer:
    """Answers every POST with 200 and ``BODY``, one byte every ``gap`` seconds. Counts the
    posts open at once (``most_open``), and those the client cut before the end (``cut``)."""

    def __init__(self, gap: float = 0.2) -> None:
        self.gap = gap
        self.posts = 0
        self.open_posts = 0
        self.most_open = 0
        self.cut = 0
        self.completed = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> TrickleServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/sync"

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while await self._answer_one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()

    async def _answer_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if not (await reader.readline()).strip():
            return False
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        await reader.readexactly(length)
        self.posts += 1
        self.open_posts += 1
        self.most_open = max(self.most_open, self.open_posts)
        try:
            head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            writer.write(f"{head}Content-Length: {len(BODY)}\r\n\r\n".encode())
            trickle = asyncio.create_task(self._trickle(writer))
            hang_up = asyncio.create_task(reader.read(1))  # b"" once the client closes
            await asyncio.wait({trickle, hang_up}, return_when=asyncio.FIRST_COMPLETED)
            if trickle.done():
                self.completed += 1
                hang_up.cancel()
                return True
            self.cut += 1
            trickle.cancel()
            return False
        finally:
            self.open_posts -= 1

    async def _trickle(self, writer: asyncio.StreamWriter) -> None:
        for byte in BODY:
            await asyncio.sleep(self.gap)  # the server's pace, not a synchronisation
            writer.write(bytes([byte]))
            await writer.drain()


@pytest.fixture
async def trickle() -> AsyncIterator[TrickleServer]:
    server = await TrickleServer().start()
    yield server
    await server.stop()


def reporting(lease: float, **extra: Any) -> dict[str, Any]:
    return {"lease_seconds": lease, "retry_initial": 0.05, "retry_max": 0.1, **extra}


def heartbeat(service: Service, reporter: str = "proxy_sync") -> float:
    beat: float = service.reporting.status()[reporter]["heartbeat"]  # type: ignore[assignment]
    return beat


async def test_a_trickled_answer_ends_at_the_deadline_and_the_heartbeat_stays_fresh(
    make_service: ServiceFactory, sink: Any, trickle: TrickleServer, events: EventLog
) -> None:
    """The post outlives the lease (1.5 s against 0.6 s): it is bounded by proxy_sync's
    timeout, and the loop beats and renews the lease meanwhile."""
    service = await make_service(
        proxy_sync={"url": trickle.url, "timeout": 1.5}, reporting=reporting(0.6)
    )
    await service.put_account(account(sink))
    await service.add_messages([message("m1")])

    async def posting() -> bool:
        return trickle.open_posts == 1

    await wait_until(posting)
    first = heartbeat(service)

    async def beat_while_posting() -> bool:
        return heartbeat(service) > first

    await wait_until(beat_while_posting)
    assert trickle.open_posts == 1  # still the same post
    assert service.health_problems() == []
    [failed] = await events.wait("report_failed")
    assert failed.data["reporter"] == "proxy_sync"

    async def cut() -> bool:
        return trickle.cut >= 1

    await wait_until(cut)  # the client hung up before the end of the answer
    assert trickle.completed == 0

    trickle.gap = 0.0  # the endpoint recovers: the same report goes through
    [posted] = await events.wait("report_posted")
    assert posted.data["count"] == 1
    assert service.health_problems() == []


async def test_the_lease_is_never_taken_over_mid_post(
    make_service: ServiceFactory, sink: Any, trickle: TrickleServer, events: EventLog
) -> None:
    """Two processes on one database, each trying to take the lease every 0.3 s: while one
    posts (for longer than a lease), the other never posts the same batch."""
    tables = {"proxy_sync": {"url": trickle.url, "timeout": 1.5}, "reporting": reporting(0.6)}
    first = await make_service(**tables)
    second = await make_service(**tables)
    await first.put_account(account(sink))
    await first.add_messages([message("m1")])
    await events.wait("report_failed", count=3)

    async def cut() -> bool:
        return trickle.cut >= 3

    await wait_until(cut)
    assert trickle.most_open == 1
    assert trickle.completed == 0
    assert first.health_problems() == second.health_problems() == []


class SilentReporter:
    """A reporter (of a third-party plugin, say) that never answers until told to."""

    report_deferred = False

    def __init__(self) -> None:
        self.answer = asyncio.Event()
        self.calls = 0

    async def report(self, reports: Sequence[DeliveryReport]) -> ReportReply:
        self.calls += 1
        await self.answer.wait()
        return ReportReply(acknowledged=True)

    async def close(self) -> None:
        pass


class SilentReporterPlugin:
    __name__ = "test-silent-reporter"

    def __init__(self) -> None:
        self.reporter = SilentReporter()

    @hookimpl
    def gmp_register_reporters(self, register: Any, service: Service) -> None:
        register("silent", self.reporter)


async def test_post_timeout_bounds_any_reporter(
    make_service: ServiceFactory, sink: Any, events: EventLog
) -> None:
    plugin = SilentReporterPlugin()
    service = await make_service(
        plugins=[plugin], reporting=reporting(0.6, post_timeout=0.8, heartbeat_seconds=0)
    )
    await service.put_account(account(sink))
    await service.add_messages([message("m1")])
    await events.wait("report_failed", count=2)  # cancelled at the deadline, and retried
    assert service.health_problems() == []
    plugin.reporter.answer.set()
    [posted] = await events.wait("report_posted")
    assert posted.data == {"reporter": "silent", "count": 1, "duration": posted.data["duration"]}


class StuckObserver:
    """A ``gmp_event`` observer that never returns from the first acknowledged report."""

    __name__ = "test-stuck-observer"

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.stuck = asyncio.Event()

    @hookimpl
    async def gmp_event(self, event: Event) -> None:
        if event.kind == "report_posted" and not self.release.is_set():
            self.stuck.set()
            await self.release.wait()


async def test_a_stuck_report_loop_makes_health_fail_naming_it(
    tmp_path: Path, sink: Any, gmp_report_receiver: Any
) -> None:
    observer = StuckObserver()
    tables = {
        "plugins": {"disable": []},  # with the REST API
        "rest": {"port": 0},
        "proxy_sync": {"url": gmp_report_receiver.url},
        "reporting": reporting(0.5),
    }
    service = Service(Config(merge(fast_tables(tmp_path), tables), environ={}), plugins=[observer])
    await service.start()
    try:
        await service.put_account(account(sink))
        await service.add_messages([message("m1")])
        await asyncio.wait_for(observer.stuck.wait(), 15)

        async def unhealthy() -> bool:
            return bool(service.health_problems())

        await wait_until(unhealthy)
        async with httpx.AsyncClient(base_url=str(service.state["rest"].url)) as http:
            answer = await http.get("/health")
            assert answer.status_code == 503
            assert answer.json()["error"].startswith(
                "background task gmp-reporter-proxy_sync is stuck (no heartbeat for"
            )
            observer.release.set()

            async def healthy() -> bool:
                return service.health_problems() == []

            await wait_until(healthy)
            assert (await http.get("/health")).status_code == 200
    finally:
        observer.release.set()
        await service.stop()
