"""The real thing: `gmp serve` as a process, driven over HTTP, stopped and killed."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gmp_core.testing import SmtpSink
from tests.support import message

TOKEN = "process-test-token"
LISTENING = re.compile(rb"REST API listening on (http://\S+)")


class ServeProcess:
    """`gmp serve` with a config of the test's, reachable at ``url`` once started."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self.log: list[bytes] = []
        self._logged = asyncio.Condition()

    async def start(self) -> ServeProcess:
        gmp = Path(sys.executable).parent / "gmp"
        self.proc = await asyncio.create_subprocess_exec(
            str(gmp),
            "serve",
            "--config",
            str(self.config),
            "--log-level",
            "INFO",
            stderr=asyncio.subprocess.PIPE,
            cwd=self.config.parent,
            env={**os.environ, "GMP_CONFIG": ""},
        )
        assert self.proc.stderr is not None
        async with asyncio.timeout(30):
            while not self.url:
                line = await self.proc.stderr.readline()
                assert line, "gmp serve exited during start-up"
                if found := LISTENING.search(line):
                    self.url = found.group(1).decode()
        self._drain = asyncio.create_task(self._drain_stderr())
        return self

    async def _drain_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            async with self._logged:
                self.log.append(line)
                self._logged.notify_all()

    async def wait_for_log(self, text: bytes) -> None:
        async with asyncio.timeout(30), self._logged:
            await self._logged.wait_for(lambda: any(text in line for line in self.log))

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers={"X-API-Token": TOKEN}, timeout=30)

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        async with asyncio.timeout(30):
            code = await self.proc.wait()
            await self._drain
        return code


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


async def post(client: httpx.AsyncClient, path: str, body: dict[str, object]) -> dict:
    response = await client.post(path, json=body)
    assert response.status_code == 200, response.text
    return response.json()


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
        assert answer == {"ok": True, "queued": 20, "rejected": []}
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
        config.write(f'[proxy_sync]\nurl = "{receiver.url}"\n[reporting]\ninterval = 0\n')
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
