"""Memory with large attachments: N messages, each with one attachment of SIZE MiB from a
local volume, sent concurrently to a discarding SMTP sink in another process.

python bench/attachments.py [N=8] [SIZE=25]

Prints the process's peak RSS before and after, and the growth per message in flight.
"""

from __future__ import annotations

import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gmp_core import Config, Event, Service, hookimpl

MiB = 1024 * 1024

# bench/sink.py, without aiosmtpd's default 32 MiB cap on a mail's size
SINK = """
import asyncio, sys
from aiosmtpd.smtp import SMTP
class Discard:
    async def handle_DATA(self, server, session, envelope):
        return "250 OK"
async def main(port):
    loop = asyncio.get_running_loop()
    make = lambda: SMTP(Discard(), hostname="sink", data_size_limit=None)
    server = await loop.create_server(make, "127.0.0.1", port)
    print("ready", flush=True)
    await server.serve_forever()
asyncio.run(main(int(sys.argv[1])))
"""


class Done:
    def __init__(self, count: int) -> None:
        self.count = count
        self.finished = 0
        self.errors: list[str] = []
        self.all_done = asyncio.Event()

    @hookimpl
    def gmp_event(self, event: Event) -> None:
        if event.kind in ("sent", "error"):
            self.finished += 1
            if event.kind == "error":
                self.errors.append(event.detail)
            if self.finished == self.count:
                self.all_done.set()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def main(count: int, size_mib: int) -> None:
    with tempfile.TemporaryDirectory() as work:
        root = Path(work) / "files"
        root.mkdir()
        for i in range(count):
            (root / f"f{i}.bin").write_bytes(os.urandom(size_mib * MiB))
        port = 20000 + os.getpid() % 20000
        sink = subprocess.Popen(
            [sys.executable, "-c", SINK, str(port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
        done = Done(count)
        tables = {
            "plugins": {"disable": ["rest"]},
            "sql": {"url": str(Path(work) / "gmp.db")},
            "service": {"max_concurrent_sends": count},
            "smtp": {"command_timeout": 120},
            "volumes": {
                "mounts": [
                    {"name": "files", "backend": "local", "config": {"base_path": str(root)}}
                ]
            },
        }
        service = Service(Config(tables, environ={}), plugins=[done])
        await service.start()
        try:
            account = {"id": "acc", "host": "127.0.0.1", "port": port, "tls": "none"}
            await service.put_account({**account, "max_connections": count})
            before = peak_rss_mib()
            started = time.perf_counter()
            messages = [
                {
                    "id": f"m{i}",
                    "account_id": "acc",
                    "from": "a@example.com",
                    "to": ["b@example.com"],
                    "attachments": [{"filename": f"f{i}.bin", "storage_path": f"files:f{i}.bin"}],
                }
                for i in range(count)
            ]
            await service.add_messages(messages)
            await asyncio.wait_for(done.all_done.wait(), 600)
            elapsed = time.perf_counter() - started
        finally:
            await service.stop()
            sink.terminate()
            sink.wait()
    after = peak_rss_mib()
    print(f"{count} messages x {size_mib} MiB attachment, sent in {elapsed:.1f} s")
    print(f"errors: {done.errors or 'none'}")
    print(f"peak RSS before: {before:.0f} MiB, after: {after:.0f} MiB")
    print(f"growth: {after - before:.0f} MiB = {(after - before) / count:.0f} MiB per message")


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    asyncio.run(main(*(args or [8, 25])))
