"""Which database errors mean "the store cannot write": a full disk, a full quota.

They are told apart from other failures so that the API can answer 507 (insufficient
storage) rather than 500, and ``/ready`` can say why. The reason is a fixed text, never the
database's own message: PostgreSQL's names the data file it could not extend.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

SQLITE_FULL = sqlite3.SQLITE_FULL  # "database or disk is full" (also past max_page_count)
POSTGRES_DISK_FULL = "53100"  # SQLSTATE disk_full


def cannot_write(error: BaseException) -> str | None:
    """The reason a write failed for lack of space, or None for any other error."""
    for cause in _causes(error):
        if isinstance(cause, sqlite3.Error) and _primary(cause) == SQLITE_FULL:
            return "database or disk is full"
        # asyncpg's errors carry ``sqlstate``; psycopg's ``pgcode``.
        for attribute in ("sqlstate", "pgcode"):
            if getattr(cause, attribute, None) == POSTGRES_DISK_FULL:
                return "disk full"
    return None


def _primary(error: sqlite3.Error) -> int | None:
    code = getattr(error, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None  # extended codes keep it low


def _causes(error: BaseException) -> Iterator[BaseException]:
    """The error, what peewee wrapped (``orig``), and its causes and contexts."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        cause = pending.pop()
        if cause is None or id(cause) in seen:
            continue
        seen.add(id(cause))
        yield cause
        wrapped = getattr(cause, "orig", None)
        pending += [wrapped if isinstance(wrapped, BaseException) else None]
        pending += [cause.__cause__, cause.__context__]
