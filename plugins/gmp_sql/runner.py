"""Where store operations run: one dedicated thread that owns the SQLite connection.

Each store operation is a plain synchronous peewee function (one transaction), handed to the
thread whole: one hop between the event loop and the database per operation.

Why not ``playhouse.pwasyncio`` for SQLite: it runs every statement through aiosqlite as
three thread hops (execute, fetch, close), so a one-message enqueue (begin, four statements,
commit) cost 1.2 ms against 0.17 ms here (measured on this project's 2-core machine). A single
connection also means the process never contends with itself for SQLite's one write lock.
The same synchronous functions run unchanged on peewee's greenlet bridge (``db.run(fn)``)
for an asyncio driver such as asyncpg.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Concatenate, ParamSpec, Protocol, TypeVar

import peewee as pw

P = ParamSpec("P")
T = TypeVar("T")


class DatabaseThread:
    def __init__(self, db: pw.Database) -> None:
        self.db = db
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gmp-db")

    async def run(self, fn: Callable[[], T]) -> T:
        # Once started, an operation finishes even if the awaiting task is cancelled: the
        # thread never abandons a transaction half-way.
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def close(self) -> None:
        await self.run(self.db.close)
        self._executor.shutdown(wait=True)


class _HasThread(Protocol):
    thread: DatabaseThread


S = TypeVar("S", bound=_HasThread)


def on_db_thread(
    method: Callable[Concatenate[S, P], T],
) -> Callable[Concatenate[S, P], Awaitable[T]]:
    """Turn a synchronous store method into an async one that runs on the database thread."""

    @functools.wraps(method)
    async def run(self: S, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self.thread.run(functools.partial(method, self, *args, **kwargs))

    return run
