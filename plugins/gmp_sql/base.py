"""What every part of the SQL store stands on: its attributes, its two ways to run SQL, and the
helpers that write one statement for a whole batch.

:class:`~gmp_sql.store.SqlStore` is composed of parts, one job each (``queue.py``,
``reports.py``, ``accounts.py``, ``admin.py``, ``leases.py``, ``rate_windows.py``,
``volumes.py``, ``captures.py``, ``rotation.py``); each is a mixin on :class:`SqlBase`, which
declares what ``SqlStore.__init__`` sets. Our SQL marks parameters with ``?`` in both dialects
(:meth:`SqlBase._sql` turns them into PostgreSQL's ``%s``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from itertools import islice
from typing import Any

import peewee as pw

from gmp_core import State
from gmp_sql.runner import Runner
from gmp_sql.schema import Schema
from gmp_sql.secrets import Keyring

ROWS_PER_STATEMENT = 400  # keeps every statement well under the bound-parameter limits
UNSENT = (State.QUEUED, State.SCHEDULED, State.SENDING)


class SqlBase:
    """The store's state, as ``SqlStore.__init__`` sets it, and its plumbing."""

    db: pw.Database
    runner: Runner
    schema: Schema
    keyring: Keyring  # no key: secrets in clear (warned at open)
    postgres: bool  # PostgreSQL, not SQLite
    write_failure: str | None  # set by on_db_thread, cleared by ping

    def _write(self) -> AbstractContextManager[Any]:
        """A write transaction; on SQLite it takes the write lock at BEGIN."""
        return self.db.atomic() if self.postgres else self.db.atomic("IMMEDIATE")

    def _sql(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if self.postgres:  # our SQL marks parameters with "?"; peewee's PostgreSQL uses %s
            sql = sql.replace("?", "%s")
        rows: list[tuple[Any, ...]] = self.db.execute_sql(sql, params).fetchall()
        return rows


def dicts(query: pw.ModelSelect[Any]) -> list[dict[str, Any]]:
    """Rows as dicts (peewee's stubs type ``.dicts()`` rows as model instances)."""
    rows: list[dict[str, Any]] = list(query.dicts())
    return rows


def chunks(items: Sequence[Any], size: int = ROWS_PER_STATEMENT) -> Iterable[list[Any]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def marks(items: Sequence[Any]) -> str:
    return ", ".join("?" * len(items))


def typed_rows(rows: int, types: Sequence[str]) -> str:
    """``VALUES`` rows whose first row names the column types: PostgreSQL cannot infer the
    type of a parameter in a ``VALUES`` list (it would take NULLs and numbers for text)."""
    first = "(" + ", ".join(f"CAST(? AS {t})" for t in types) + ")"
    return ", ".join([first, *[value_rows(1, len(types))] * (rows - 1)])


def value_rows(rows: int, columns: int) -> str:
    row = "(" + ", ".join("?" * columns) + ")"
    return ", ".join([row] * rows)


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
