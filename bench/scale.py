"""Scale-out benchmark: 1 and then 3 `gmp serve` processes on one PostgreSQL database.

    .venv/bin/python bench/scale.py             # 3,000 messages per run
    .venv/bin/python bench/scale.py --quick     # 600

The sink (aiosmtpd in its own process) takes 20 ms to accept each mail, as a distant relay
would: one process is then bound by its connections, not by its CPU, and more processes
should add throughput almost linearly. Each process has the same account settings (5
connections). The database is a fresh schema of ``gmp_bench`` on the local PostgreSQL
(``GMP_BENCH_POSTGRES_URL`` to use another). Results go to stdout as Markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from run import Proxy, call, payload, setup_account, smtp_sink

from gmp_core.testing import postgresql_schema

ADMIN_URL = os.environ.get(
    "GMP_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
DELAY = 0.020
CONNECTIONS = 5


async def run(processes: int, count: int, sink_port: int) -> float:
    """Messages per second from activation until all are sent."""
    async with postgresql_schema(ADMIN_URL, "gmp_bench") as url:
        with tempfile.TemporaryDirectory() as tmp:
            proxies = [Proxy(Path(tmp), CONNECTIONS, database_url=url) for _ in range(processes)]
            clients = [proxy.client() for proxy in proxies]
            try:
                await setup_account(clients[0], sink_port, CONNECTIONS)
                for client in clients:
                    await call(client, "POST", "/commands/suspend")
                for first in range(0, count, 1000):
                    batch = [payload(i) for i in range(first, min(count, first + 1000))]
                    body = {"messages": batch}
                    await call(clients[0], "POST", "/commands/add-messages", json=body)
                started = time.perf_counter()
                for client in clients:
                    await call(client, "POST", "/commands/activate")
                while (await call(clients[0], "GET", "/status"))["queue"]["sent"] < count:
                    await asyncio.sleep(0.05)
                return count / (time.perf_counter() - started)
            finally:
                for client in clients:
                    await client.aclose()
                for proxy in proxies:
                    proxy.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    count = 600 if args.quick else 3000
    with smtp_sink("aiosmtpd", delay=DELAY) as sink_port:
        one = await run(1, count, sink_port)
        three = await run(3, count, sink_port)
    print(
        f"| processes | messages | msg/s |\n|---|---|---|\n"
        f"| 1 | {count:,} | {one:,.0f} |\n| 3 | {count:,} | {three:,.0f} |\n\n"
        f"3 processes / 1 process: **{three / one:.2f}x** "
        f"(sink: {DELAY * 1000:.0f} ms per mail; {CONNECTIONS} connections per process)"
    )


if __name__ == "__main__":
    asyncio.run(main())
