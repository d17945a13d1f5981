"""The real thing: `gmp serve` as a process, driven over HTTP, stopped and killed."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gmp_core.testing import SmtpSink
from tests.processes import TOKEN, ServeProcess, post
from tests.support import message


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "plugins.toml"
    path.write_text(
        f'[sql]\nurl = "{tmp_path / "gmp.db"}"\n'
        "[rest]\nport = 0\n"
        f'[token_auth]\napi_token = "{TOKEN}"\n'
        "[service]\nsend_loop_interval = 0.05\nlease_seconds = 2\nretry_delays = [0.2]\n"
        "shutdown_timeout = 10\n"
    )
    return path


@pytest.fixture
async def processes(config_file: Path) -> AsyncIterator[list[ServeProcess]]:
    started: list[ServeProcess] = []
    yield started
    for process in started:
        await process.stop(signal.SIGKILL)


async def serve(config_file: Path, processes: list[ServeProcess]) -> ServeProcess:
    process = await ServeProcess(config_file).start()
    processes.append(process)
    return process


async def test_http_in_smtp_out_and_sigterm_exits_cleanly(
    config_file: Path, processes: list[ServeProcess], sink: SmtpSink
) -> None:
    proxy = await serve(config_file, processes)
    async with proxy.client() as client:
        await post(
            client, "/account", {"id": "acc", "host": sink.host, "port": sink.port, "tls": "none"}
        )
        answer = await post(
            client, "/commands/add-messages", {"messages": [message(f"m{i}") for i in range(20)]}
        )
        assert answer == {"ok": True, "queued": 20, "rejected": [], "warnings": []}
        await sink.wait_for(20)
    assert await proxy.stop(signal.SIGTERM) == 0
    assert sink.quits == sink.connections  # every pooled connection said QUIT


async def hold_sends(
    proxy: ServeProcess, sink: SmtpSink, *, messages: int, connections: int
) -> None:
    """Queue ``messages`` and return once ``connections`` of them wait in DATA at the sink."""
    sink.hold = asyncio.Event()
    async with proxy.client() as client:
        await post(
            client,
            "/account",
            {
                "id": "acc",
                "host": sink.host,
                "port": sink.port,
                "tls": "none",
                "max_connections": connections,
            },
        )
        await post(
            client,
            "/commands/add-messages",
            {"messages": [message(f"m{i}") for i in range(messages)]},
        )
        await sink.wait_held(connections)


async def test_sigterm_finishes_sends_in_flight(
    config_file: Path, processes: list[ServeProcess], sink: SmtpSink
) -> None:
    proxy = await serve(config_file, processes)
    await hold_sends(proxy, sink, messages=10, connections=2)
    assert proxy.proc is not None and sink.hold is not None
    proxy.proc.send_signal(signal.SIGTERM)
    await proxy.wait_for_log(b"stopping: finishing sends in flight")
    sink.hold.set()
    assert await proxy.stop() == 0
    in_flight = len(sink.mails)
    assert in_flight == 2

    restarted = await serve(config_file, processes)  # the rest was given back, not lost
    await sink.wait_for(10)
    assert sorted(sink.by_id()) == sorted(f"m{i}" for i in range(10))
    assert all(len(copies) == 1 for copies in sink.by_id().values())
    assert await restarted.stop() == 0


async def test_sigkill_mid_dispatch_loses_nothing(
    config_file: Path, processes: list[ServeProcess], sink: SmtpSink
) -> None:
    proxy = await serve(config_file, processes)
    await hold_sends(proxy, sink, messages=60, connections=3)
    await proxy.stop(signal.SIGKILL)
    # The three transactions the dead process had reached DATA on may still complete at
    # the server: those, and only those, can arrive twice.
    assert sink.hold is not None
    sink.hold.set()

    restarted = await serve(config_file, processes)  # claims come back when leases end
    await sink.wait_for(60)
    delivered = sink.by_id()
    assert sorted(delivered) == sorted(f"m{i}" for i in range(60))
    duplicates = sum(len(copies) - 1 for copies in delivered.values())
    assert duplicates <= 3
    async with restarted.client() as client:
        status = (await client.get("/status")).json()
    assert status["queue"]["sent"] == 60


async def test_a_report_posted_but_not_marked_is_posted_again_after_sigkill(
    config_file: Path, processes: list[ServeProcess], sink: SmtpSink
) -> None:
    from tests.receiver import ReportReceiver

    receiver = await ReportReceiver().start()
    receiver.mode = "slow"  # the client got the report; the proxy never hears back
    with config_file.open("a") as config:
        # The dead process's report lease holds its reports up until it runs out.
        config.write(
            f'[proxy_sync]\nurl = "{receiver.url}"\n[reporting]\ninterval = 0\nlease_seconds = 1\n'
        )
    proxy = await serve(config_file, processes)
    async with proxy.client() as client:
        await post(
            client, "/account", {"id": "acc", "host": sink.host, "port": sink.port, "tls": "none"}
        )
        await post(client, "/commands/add-messages", {"messages": [message("r1")]})
    await receiver.wait(lambda r: len(r.reported()) == 1)
    await proxy.stop(signal.SIGKILL)
    receiver.mode = "ok"
    receiver.release.set()

    restarted = await serve(config_file, processes)
    await receiver.wait(lambda r: len(r.reported()) == 2)
    assert [r["id"] for r in receiver.reported()] == ["r1", "r1"]  # at least once
    async with restarted.client() as client:
        record = (await client.get("/messages/r1")).json()
    assert len(sink.mails) == 1  # the mail itself went once
    await restarted.stop()
    await receiver.stop()
    assert record["message"]["status"] == "sent"
