"""An aiosmtpd sink in its own process, for benchmarks: accepts and discards every mail.

python bench/sink.py PORT [DELAY]   # prints "ready" once listening; DELAY: seconds per DATA
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from aiosmtpd.smtp import SMTP


class Discard:
    def __init__(self, delay: float) -> None:
        self.delay = delay  # a slow relay: each mail takes this long to be accepted

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        return "250 OK"


async def main(port: int, delay: float) -> None:
    loop = asyncio.get_running_loop()
    handler = Discard(delay)
    server = await loop.create_server(lambda: SMTP(handler, hostname="sink"), "127.0.0.1", port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 0.0))
