"""Benchmarks: enqueue latency, batch intake, end-to-end delivery, and a raw ceiling.

    .venv/bin/python bench/run.py            # the full run (about 5 minutes)
    .venv/bin/python bench/run.py --quick    # smaller counts, for a smoke check
    .venv/bin/python bench/run.py --no-split # every process on any core (see Cores)

Each proxy figure comes from a real ``gmp serve`` process (SQLite in a temporary directory)
driven over HTTP from this process, sending to a sink in a third process: aiosmtpd (Python)
and Postfix's ``smtp-sink`` (C; ``apt-get install postfix``), whose higher ceiling shows the
proxy's own cost. The ceiling is raw aiosmtplib in this process sending the same bytes to the
same sink over the same number of connections. The sink has a core of its own. Results go to
stdout as Markdown; docs/performance.md says how each figure is taken.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
import httpx

from gmp_core.intake import parse_message
from gmp_core.mime import build_mime
from gmp_core.models import Message, OutgoingMessage

HERE = Path(__file__).resolve().parent
TOKEN = "bench-token"
BODY = (
    "Dear customer,\n\nyour order has shipped and will arrive within three working "
    "days. Track it from your account page.\n\nThank you for shopping with us.\n"
) * 6


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def payload(i: int, prefix: str = "m") -> dict[str, Any]:
    return {
        "id": f"{prefix}{i}",
        "account_id": "bench",
        "from": "Shop <shop@example.com>",
        "to": [f"customer{i}@example.com"],
        "subject": f"Your order {i} has shipped",
        "body": BODY,
    }


def raw_bytes() -> bytes:
    """The bytes the proxy sends for a benchmark message (same builder, same content)."""
    message = parse_message(payload(0), default_priority=2, default_account=None)
    return build_mime(OutgoingMessage(message, attempt=1))


# ---------------------------------------------------------------------- cores


class Cores:
    """Which cores the sink and the senders run on; everything anywhere until :meth:`split`.

    The sink stands for a remote SMTP server, which would not take the sender's CPU. Left to
    the scheduler on two cores, the proxy's database thread runs on the sink's core now and
    then and slows the sink (3 busy threads on 2 cores), while raw aiosmtplib, one thread,
    never does: that cost the proxy about 5 % of the ratio and most of the run-to-run spread.
    Split, the sink has the last core to itself and this process, the proxy and the raw
    client share the others: the same CPU for the raw client as for the proxy."""

    sink: set[int] | None = None
    senders: set[int] | None = None

    @classmethod
    def split(cls) -> None:
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        if len(cores) >= 2:
            cls.sink, cls.senders = {cores[-1]}, set(cores[:-1])
            os.sched_setaffinity(0, cls.senders)  # this process: the raw client, the poller


def on_cores(cores: set[int] | None, command: list[str]) -> list[str]:
    """``command``, started on ``cores`` (all its threads; None: anywhere)."""
    if cores is None:
        return command
    pin = "import os, sys; os.sched_setaffinity(0, {%s}); os.execvp(sys.argv[1], sys.argv[1:])"
    return [sys.executable, "-c", pin % ",".join(map(str, cores)), *command]


# ---------------------------------------------------------------------- processes


@contextlib.contextmanager
def smtp_sink(kind: str, delay: float = 0.0) -> Iterator[int]:
    """A sink process; ``delay`` (aiosmtpd only): seconds each mail takes to be accepted."""
    port = free_port()
    if kind == "aiosmtpd":
        proc = subprocess.Popen(
            on_cores(Cores.sink, [sys.executable, str(HERE / "sink.py"), str(port), str(delay)]),
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    else:
        user = "nobody" if os.geteuid() == 0 else os.environ.get("USER", "nobody")
        proc = subprocess.Popen(
            on_cores(Cores.sink, ["smtp-sink", "-u", user, "-c", f"127.0.0.1:{port}", "1000"]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(port)
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait()


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


class Proxy:
    """A ``gmp serve`` process on a fresh SQLite database, or on ``database_url``."""

    def __init__(self, workdir: Path, connections: int, database_url: str | None = None) -> None:
        self.port = free_port()
        self.workdir = workdir
        config = workdir / f"plugins-{self.port}.toml"
        config.write_text(
            f'[sql]\nurl = "{database_url or workdir / "gmp.db"}"\n'
            f"[rest]\nport = {self.port}\n"
            f'[token_auth]\napi_token = "{TOKEN}"\n'
            f"[service]\nmax_concurrent_sends = {max(32, connections)}\n"
            "batch_size_per_account = 500\n"
        )
        self.proc = subprocess.Popen(
            on_cores(
                Cores.senders,
                [
                    str(Path(sys.executable).parent / "gmp"),
                    "serve",
                    "--config",
                    str(config),
                    "--log-level",
                    "WARNING",
                ],
            ),
            cwd=workdir,
        )
        wait_for_port(self.port)
        self.url = f"http://127.0.0.1:{self.port}"

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers={"X-API-Token": TOKEN}, timeout=60)

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


@contextlib.asynccontextmanager
async def proxy_for(
    sink_port: int, connections: int
) -> AsyncIterator[tuple[Proxy, httpx.AsyncClient]]:
    """A fresh proxy with the benchmark account, and a client for it."""
    with tempfile.TemporaryDirectory() as tmp:
        proxy = Proxy(Path(tmp), connections)
        try:
            async with proxy.client() as client:
                await setup_account(client, sink_port, connections)
                yield proxy, client
        finally:
            proxy.stop()


async def call(client: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> Any:
    response = await client.request(method, path, **kwargs)
    response.raise_for_status()
    return response.json()


async def setup_account(client: httpx.AsyncClient, sink_port: int, connections: int) -> None:
    await call(
        client,
        "POST",
        "/account",
        json={
            "id": "bench",
            "host": "127.0.0.1",
            "port": sink_port,
            "tls": "none",
            "max_connections": connections,
            "batch_size": 500,
        },
    )


async def enqueue(
    client: httpx.AsyncClient, count: int, prefix: str = "m", batch: int = 1000
) -> float:
    """Queue ``count`` messages in batches; return messages per second."""
    started = time.perf_counter()
    for first in range(0, count, batch):
        body = {"messages": [payload(i, prefix) for i in range(first, min(count, first + batch))]}
        result = await call(client, "POST", "/commands/add-messages", json=body)
        assert result["queued"] == len(body["messages"]), result
    return count / (time.perf_counter() - started)


async def wait_until_done(client: httpx.AsyncClient) -> None:
    """Until nothing is queued, scheduled or sending. One index lookup per poll (a whole-table
    count would load the proxy we are measuring)."""
    for status in ("queued", "sending", "scheduled"):
        params = {"status": status, "limit": 1}
        while (await call(client, "GET", "/messages", params=params))["messages"]:
            await asyncio.sleep(0.05)


async def sent_in_order(client: httpx.AsyncClient, total: int) -> tuple[list[str], int]:
    """The ids of the messages recorded ``sent``, in the order they were queued (and so
    claimed), checked to be all ``total``; and the latest ``sent_ts`` (whole seconds)."""
    ids, latest_second, cursor = [], 0, None
    while True:
        params: dict[str, Any] = {"status": "sent", "limit": 1000}
        if cursor is not None:
            params["cursor"] = cursor
        page = await call(client, "GET", "/messages", params=params)
        ids += [m["id"] for m in page["messages"]]
        latest_second = max([latest_second, *(m["sent_ts"] for m in page["messages"])])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(ids) == total, (len(ids), total)
    return ids, latest_second


async def latest_sent(client: httpx.AsyncClient, ids: list[str]) -> float:
    """When the server accepted the last of ``ids``: their latest ``sent`` event (``ts`` to
    the microsecond)."""
    latest = 0.0
    for message_id in ids:
        events = (await call(client, "GET", f"/messages/{message_id}"))["events"]
        latest = max([latest, *(e["ts"] for e in events if e["kind"] == "sent")])
    return latest


async def deliver_all(
    client: httpx.AsyncClient, total: int, tenths: bool = False
) -> tuple[float, list[float]]:
    """Activate sending and wait until all are sent; messages/s overall and, when asked, in
    each tenth of the run.

    The clock runs from the activation request to the moment the server accepted the last
    message, as the proxy recorded it in its ``sent`` event, not to the poll that noticed:
    the 50 ms polling step would count as the proxy's time. Messages are claimed in the order
    they were queued, 8 to 64 at a time, so the last of the 200 last queued is the last sent
    (checked to the second against every message's ``sent_ts``), and the last of the 50
    queued before the k-th tenth's end marks that tenth's end. Nothing is sampled while the
    proxy works: a count per second would load it more as the table grows."""
    wall_start = time.time()
    await call(client, "POST", "/commands/activate")
    await wait_until_done(client)
    ids, latest_second = await sent_in_order(client, total)
    finished = await latest_sent(client, ids[-200:])
    assert int(finished) == latest_second, (finished, latest_second)
    segments = []
    if tenths:
        step = total // 10
        marks = [wall_start]
        for end in range(step, total, step):
            marks.append(await latest_sent(client, ids[end - 50 : end]))
        marks.append(finished)
        segments = [step / (later - earlier) for earlier, later in itertools.pairwise(marks)]
    return total / (finished - wall_start), segments


# ---------------------------------------------------------------------- measurements


async def raw_ceiling(sink_port: int, connections: int, count: int, mode: str) -> float:
    """Raw aiosmtplib: ``connections`` clients sending ``count`` messages as fast as they can.

    ``built``: each message's bytes built by the proxy's own builder as it goes (the same
    work per message as the proxy, minus the proxy); ``prebuilt``: one set of bytes built in
    advance (only the SMTP exchange); ``naive``: a fresh ``EmailMessage`` and
    ``send_message`` per mail, as applications usually do.
    """
    messages = [
        parse_message(payload(i), default_priority=2, default_account=None) for i in range(count)
    ]
    prebuilt = raw_bytes()
    remaining = iter(messages)

    async def send(smtp: aiosmtplib.SMTP, message: Message) -> None:
        if mode == "built":
            data = build_mime(OutgoingMessage(message, attempt=1))
            await smtp.sendmail(message.envelope_sender, message.recipients, data)
        elif mode == "prebuilt":
            await smtp.sendmail(message.envelope_sender, message.recipients, prebuilt)
        else:
            mail = EmailMessage()
            mail["From"], mail["To"] = "Shop <shop@example.com>", message.recipients[0]
            mail["Subject"] = message.subject
            mail.set_content(message.body)
            await smtp.send_message(mail)

    async def worker() -> None:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=sink_port, start_tls=False)
        await smtp.connect()
        for message in remaining:
            await send(smtp, message)
        await smtp.quit()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return count / (time.perf_counter() - started)


class LeanClient:
    """HTTP/1.1 over one keep-alive connection with nothing on top, so that the latency we
    measure is the proxy's (httpx alone adds about 1 ms per request on this machine)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: Any) -> tuple[int, bytes]:
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        data = json.dumps(body).encode()
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Token: {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode().lower()
        status = int(head.split(" ", 2)[1])
        length = int(head.split("content-length:", 1)[1].split("\r\n", 1)[0])
        answer = await self.reader.readexactly(length)
        if "connection: close" in head:  # hypercorn closes after 1,000 requests
            self.writer.close()
            self.writer = self.reader = None
        return status, answer


async def single_enqueue_latency(port: int, count: int, prefix: str) -> tuple[float, float]:
    client = LeanClient(port)
    samples = []
    for i in range(count):
        started = time.perf_counter()
        status, _ = await client.post("/commands/add-messages", {"messages": [payload(i, prefix)]})
        samples.append(time.perf_counter() - started)
        assert status == 200
    samples.sort()
    return statistics.median(samples) * 1000, samples[int(len(samples) * 0.99)] * 1000


async def bench_sink(kind: str, connections: int, count: int, rounds: int, rows: list[str]) -> None:
    """Raw ceilings and the proxy, ``rounds`` times in turn; the medians (the machine is
    noisy: one run alone moves by 10 % and more)."""
    results: dict[str, list[float]] = {
        "built": [],
        "prebuilt": [],
        "naive": [],
        "proxy": [],
        "intake": [],
    }
    with smtp_sink(kind) as sink_port:
        for _ in range(rounds):
            for mode in ("built", "prebuilt", "naive"):
                results[mode].append(await raw_ceiling(sink_port, connections, count, mode))
            async with proxy_for(sink_port, connections) as (_, client):
                await call(client, "POST", "/commands/suspend")
                results["intake"].append(await enqueue(client, count))
                results["proxy"].append((await deliver_all(client, count))[0])
    m = {key: statistics.median(values) for key, values in results.items()}
    spread = f"{min(results['proxy']):,.0f}-{max(results['proxy']):,.0f}"
    rows.append(
        f"| {kind} | {connections} | {count:,} x {rounds} | {m['intake']:,.0f} | "
        f"**{m['proxy']:,.0f}** ({spread}) | {m['built']:,.0f} | "
        f"**{m['proxy'] / m['built']:.0%}** | "
        f"{m['prebuilt']:,.0f} ({m['proxy'] / m['prebuilt']:.0%}) | {m['naive']:,.0f} |"
    )


async def bench_latency(count: int) -> list[str]:
    """One message per request, one request at a time: with each message also being sent
    (to smtp-sink when installed), and with sending suspended."""
    rows = []
    sink = "smtp-sink" if shutil.which("smtp-sink") else "aiosmtpd"
    with smtp_sink(sink) as sink_port:
        async with proxy_for(sink_port, 4) as (proxy, client):
            await single_enqueue_latency(proxy.port, 200, "warm")
            for state in ("active", "suspended"):
                if state == "suspended":
                    await call(client, "POST", "/commands/suspend")
                p50, p99 = await single_enqueue_latency(proxy.port, count, state)
                rows.append(
                    f"| single enqueue, sending {state} | {count:,} | "
                    f"**{p50:.2f} ms** | {p99:.2f} ms |"
                )
    return rows


async def bench_scale(total: int, connections: int) -> list[str]:
    """``total`` messages through smtp-sink: throughput per tenth, latency on a full table,
    peak memory."""
    with smtp_sink("smtp-sink") as sink_port:
        async with proxy_for(sink_port, connections) as (proxy, client):
            await call(client, "POST", "/commands/suspend")
            intake = await enqueue(client, total)
            rate, segments = await deliver_all(client, total, tenths=True)
            p50, p99 = await single_enqueue_latency(proxy.port, 1000, "after")
            rss = proxy.peak_rss_mb()
    tenths = " / ".join(f"{s:,.0f}" for s in segments)
    return [
        f"- {total:,} messages: intake {intake:,.0f} msg/s; delivery {rate:,.0f} msg/s overall",
        f"- delivery rate per tenth of the run (msg/s): {tenths}",
        f"- single enqueue with {total:,} rows in the table: p50 {p50:.2f} ms, p99 {p99:.2f} ms",
        f"- peak RSS of the proxy process: {rss:.0f} MB",
    ]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument(
        "--no-split", action="store_true", help="leave every process to the scheduler"
    )
    args = parser.parse_args()
    if not args.no_split:
        Cores.split()
    count, rounds, scale, latency = (
        (2000, 1, 10_000, 300) if args.quick else (10_000, 3, 100_000, 2000)
    )

    placement = (
        f"sink on core(s) {Cores.sink}, everything else on {Cores.senders}"
        if Cores.sink
        else "every process on any core"
    )
    print(
        f"Machine: {platform.platform()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; {placement}\n"
    )
    latency_rows = await bench_latency(latency)
    print(
        "| single enqueue | requests | p50 | p99 |\n|---|---|---|---|\n"
        + "\n".join(latency_rows)
        + "\n"
    )
    rows = [
        "| sink | connections | messages x runs | batch intake msg/s "
        "| proxy end-to-end msg/s (range) | raw, built per message | proxy / raw "
        "| raw, prebuilt bytes (proxy / it) | naive EmailMessage |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    sinks = ["aiosmtpd"] + (["smtp-sink"] if shutil.which("smtp-sink") else [])
    for kind in sinks:
        await bench_sink(kind, args.connections, count, rounds, rows)
    print("\n".join(rows) + "\n")
    if "smtp-sink" in sinks:
        print("\n".join(await bench_scale(scale, args.connections)))
    else:
        print("smtp-sink not found (apt-get install postfix): scale run skipped")


if __name__ == "__main__":
    asyncio.run(main())
