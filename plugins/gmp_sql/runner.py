"""Where store operations run.

Each store operation is a plain synchronous peewee function (one transaction), handed to a
runner whole:

* SQLite: one dedicated thread that owns the connection; one hop between the event loop and
  the database per operation. Why not ``playhouse.pwasyncio`` here: it runs every statement
  through aiosqlite as three thread hops (execute, fetch, close), so a one-message enqueue
  (begin, four statements, commit) cost 1.2 ms against 0.17 ms here (measured on this
  project's 2-core machine). A single connection also means the process never contends with
  itself for SQLite's one write lock.
* PostgreSQL: the same functions on peewee's greenlet bridge (``playhouse.pwasyncio`` over
  asyncpg), each operation with a pooled connection of its own, so operations of different
  tasks run concurrently.

Either way an operation, once started, finishes even if the awaiting task is cancelled: a
transaction is never abandoned half-way. An operation that fails for lack of space raises
:class:`gmp_core.StoreCannotWrite` (``errors.py``), and the store remembers it until a write
succeeds again.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

import peewee as pw

from gmp_core import StoreCannotWrite
from gmp_sql.errors import cannot_write

P = ParamSpec("P")
T = TypeVar("T")


class Runner(Protocol):
    async def run(self, fn: Callable[[], T]) -> T: ...

    async def close(self) -> None: ...


class DatabaseThread:
    def __init__(self, db: pw.Database) -> None:
        self.db = db
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gmp-db")

    async def run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def close(self) -> None:
        await self.run(self.db.close)
        self._executor.shutdown(wait=True)


class GreenletRunner:
    """For ``playhouse.pwasyncio`` databases (PostgreSQL through asyncpg)."""

    def __init__(self, db: Any) -> None:
        self.db = db  # an AsyncPostgresqlDatabase

    async def run(self, fn: Callable[[], T]) -> T:
        # A task of its own: its pooled connection is released when the operation ends, and
        # a cancelled caller does not interrupt the transaction.
        return await asyncio.shield(asyncio.create_task(self._in_connection(fn)))

    async def _in_connection(self, fn: Callable[[], T]) -> T:
        async with self.db:
            result: T = await self.db.run(fn)
            return result

    async def close(self) -> None:
        await self.db.close_pool()


class _HasRunner(Protocol):
    runner: Runner
    write_failure: str | None  # why the last write failed for lack of space, until one works


S = TypeVar("S", bound=_HasRunner)


def on_db_thread(
    method: Callable[Concatenate[S, P], T],
) -> Callable[Concatenate[S, P], Coroutine[Any, Any, T]]:
    """Turn a synchronous store method into an async one (a coroutine function, as the
    protocols' ``async def`` methods are), run by the store's runner."""

    @functools.wraps(method)
    async def run(self: S, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await self.runner.run(functools.partial(method, self, *args, **kwargs))
        except Exception as exc:
            reason = cannot_write(exc)
            if reason is None:
                raise
            self.write_failure = reason
            raise StoreCannotWrite(reason) from exc

    return run
