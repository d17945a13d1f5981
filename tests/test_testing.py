"""gmp_core.testing: the pytest plugin plugin authors get, and its report receiver."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from gmp_core import Event, OutgoingMessage, Service, hookimpl
from gmp_core.testing import EventLog, ReportReceiver, ServiceStarter, SmtpSink, message


async def test_the_receiver_records_posted_json(gmp_report_receiver: ReportReceiver) -> None:
    async with httpx.AsyncClient() as http:  # one keep-alive connection for both requests
        first = await http.post(gmp_report_receiver.url, json={"n": 1})
        second = await http.post(
            gmp_report_receiver.url + "hook", json={"n": 2}, headers={"X-Sign": "abc"}
        )
    assert (first.status_code, first.json()) == (200, {"ok": True})
    assert second.json() == {"ok": True}
    assert gmp_report_receiver.json_bodies() == [{"n": 1}, {"n": 2}]
    request = gmp_report_receiver.requests[1]
    assert (request.method, request.path, request.headers["x-sign"]) == ("POST", "/hook", "abc")


async def test_the_receiver_answers_what_it_is_told(gmp_report_receiver: ReportReceiver) -> None:
    gmp_report_receiver.reply = (503, {"ok": False, "error": "busy"})
    async with httpx.AsyncClient() as http:
        refused = await http.post(gmp_report_receiver.url, json={})
        gmp_report_receiver.reply = (200, "<html>a login page</html>")
        html = await http.post(gmp_report_receiver.url, json={})
        gmp_report_receiver.respond = lambda request: (201, {"echo": request.json()})
        echoed = await http.post(gmp_report_receiver.url, json=[1, 2])
    assert (refused.status_code, refused.json()) == (503, {"ok": False, "error": "busy"})
    assert html.headers["content-type"].startswith("text/html")
    assert html.text == "<html>a login page</html>"
    assert (echoed.status_code, echoed.json()) == (201, {"echo": [1, 2]})


async def test_wait_for_returns_once_enough_requests_came(
    gmp_report_receiver: ReportReceiver,
) -> None:
    async with httpx.AsyncClient() as http:
        await http.post(gmp_report_receiver.url, json={"n": 1})
    assert len(await gmp_report_receiver.wait_for(1)) == 1
    with pytest.raises(TimeoutError):
        await gmp_report_receiver.wait_for(2, timeout=0.05)


class HeaderStamp:
    """An observer-style plugin: its hooks run per message, so it may join a running service."""

    __name__ = "header-stamp"

    @hookimpl
    def gmp_prepare_message(self, message: OutgoingMessage) -> None:
        message.extra_headers["X-Stamp"] = "yes"


async def test_register_a_plugin_into_a_running_service(
    gmp_service: Service,
    register_gmp_plugin: Callable[[object], object],
    gmp_smtp_sink: SmtpSink,
    gmp_events: EventLog,
) -> None:
    register_gmp_plugin(HeaderStamp())
    await gmp_service.add_messages([message("m1")])
    [mail] = await gmp_smtp_sink.wait_for(1)
    assert mail.message["X-Stamp"] == "yes"
    assert "queued" in gmp_events.kinds("m1")


class LateTransport:
    __name__ = "late-transport"

    @hookimpl
    def gmp_register_transports(self, register: object) -> None:
        raise AssertionError("never called: the service had started")


async def test_start_up_plugins_must_come_before_the_service(
    make_gmp_service: ServiceStarter,
) -> None:
    service = await make_gmp_service()
    with pytest.raises(RuntimeError, match="gmp_register_transports, which run at start-up"):
        make_gmp_service.register(LateTransport())
    assert "late-transport" not in dict(service.pm.list_name_plugin())


async def test_registered_plugins_join_services_started_later(
    make_gmp_service: ServiceStarter, gmp_events: EventLog
) -> None:
    class Seen:
        __name__ = "seen"

        def __init__(self) -> None:
            self.kinds: list[str] = []

        @hookimpl
        def gmp_event(self, event: Event) -> None:
            self.kinds.append(event.kind)

    seen = make_gmp_service.register(Seen())
    service = await make_gmp_service()
    await service.add_messages([message("bad", to="not an address")])
    await gmp_events.wait("rejected")
    assert isinstance(seen, Seen) and seen.kinds.count("rejected") == 1


def test_a_plugin_authors_project_gets_the_fixtures(tmp_path: Path) -> None:
    """No conftest, no import: installing the proxy is enough (entry point pytest11)."""
    (tmp_path / "pytest.ini").write_text("[pytest]\nasyncio_mode = auto\n")
    (tmp_path / "test_author.py").write_text(
        textwrap.dedent(
            """
            async def test_fixtures(gmp_service, gmp_smtp_sink, gmp_events, gmp_report_receiver):
                await gmp_service.add_messages([
                    {"id": "a1", "account_id": "acc", "from": "a@example.com",
                     "to": "b@example.com", "subject": "hi", "body": "x"}
                ])
                [mail] = await gmp_smtp_sink.wait_for(1)
                assert mail.gmp_id == "a1"
                await gmp_events.wait("sent", "a1")
                assert gmp_report_receiver.url.startswith("http://127.0.0.1:")
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


async def test_postgresql_schema_is_fresh_and_dropped_after(postgres_database: str) -> None:
    import asyncpg

    from gmp_core.testing import postgresql_schema
    from tests.conftest import POSTGRES_ADMIN_URL

    async with postgresql_schema(POSTGRES_ADMIN_URL, "gmp_test") as url:
        schema = url.rsplit("search_path=", 1)[1]
        conn = await asyncpg.connect(url)
        assert await conn.fetchval("SELECT current_schema()") == schema
        await conn.execute("CREATE TABLE t (x int)")  # lands in the fresh schema
        await conn.close()
    conn = await asyncpg.connect(postgres_database)
    left = await conn.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = $1", schema)
    await conn.close()
    assert left == 0
