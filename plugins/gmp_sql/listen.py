"""PostgreSQL ``LISTEN``: what one process writes wakes the others at once.

Messages queued by any process wake the idle dispatchers of all (enqueue sends ``NOTIFY
gmp_new_work`` inside its transaction, delivered at commit), and reports recorded by any
process wake the report loops of all, one of which posts them (``gmp_new_reports``). Each
process keeps one extra connection listening to both. The listener also watches the
database: while it cannot connect it says so once in the log, and once more when the
database is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger("gmp.sql")

RETRY_SECONDS = 2.0
CHECK_SECONDS = 30.0  # a connection silently gone is noticed by this periodic query


class Listener:
    """Calls ``channels[name]()`` whenever a ``NOTIFY name`` arrives, and every one of them
    when (re)connected: nothing was heard meanwhile."""

    def __init__(self, url: str, channels: Mapping[str, Callable[[], None]]) -> None:
        self.url = url
        self.channels = dict(channels)
        self.reachable = True
        self._task: asyncio.Task[None] | None = None
        self._down_since: float | None = None
        self._first_connection = True

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="gmp-postgresql-listener")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        import asyncpg

        while True:
            try:
                conn = await asyncpg.connect(self.url, timeout=10)
            except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
                self._went_down(exc)
                await asyncio.sleep(RETRY_SECONDS)
                continue
            try:
                await self._listen(conn)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                self._went_down(exc)
            finally:
                with contextlib.suppress(Exception):
                    await conn.close(timeout=1)

    async def _listen(self, conn: Any) -> None:
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        for channel, wake in self.channels.items():
            await conn.add_listener(channel, _caller(wake))
        self._came_back()
        for wake in self.channels.values():  # whatever came while nobody listened
            wake()
        while not lost.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), CHECK_SECONDS)
            if not lost.is_set():
                await conn.fetchval("SELECT 1")
        raise ConnectionResetError("connection to PostgreSQL lost")

    def _went_down(self, exc: BaseException) -> None:
        self.reachable = False
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.error(
                "PostgreSQL is unreachable (%s); work waits, nothing is lost; retrying every %.0fs",
                type(exc).__name__,
                RETRY_SECONDS,
            )

    def _came_back(self) -> None:
        if self._first_connection:
            self._first_connection = False
            log.info("listening for messages queued by other processes")
        self.reachable = True
        if self._down_since is not None:
            log.warning(
                "PostgreSQL is reachable again after %.0fs", time.monotonic() - self._down_since
            )
            self._down_since = None


def _caller(wake: Callable[[], None]) -> Callable[..., None]:
    """asyncpg calls listeners with (connection, pid, channel, payload)."""
    return lambda *_notification: wake()
