"""Captured mail in the ``captures`` table: the store's side of :class:`gmp_core.CaptureStore`.

Mixed into :class:`~gmp_sql.store.SqlStore`, so the store the service opened is the one that
keeps captures (the sandbox plugin checks that it does). Each method is one transaction on the
store's runner, like every other store operation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from gmp_core import Capture
from gmp_sql.base import SqlBase, dicts, value_rows
from gmp_sql.runner import on_db_thread

# Several processes on one PostgreSQL database: one at a time trims the table, so their
# deletes of the same oldest rows never deadlock.
CAPTURES_LOCK_ID = 0x676D7002
CAPTURE_COLUMNS = 9
ROWS_PER_INSERT = 100  # a few MB of mail at most per statement

_INSERT_SQL = """
INSERT INTO captures (account_id, gmp_id, mail_from, rcpt_to, subject, date, size, captured_at,
                      data)
VALUES {rows} RETURNING pk
"""

# Everything older than the keep-th newest capture goes: one statement, whatever the count.
_TRIM_SQL = """
DELETE FROM captures WHERE pk <= (SELECT pk FROM captures ORDER BY pk DESC LIMIT 1 OFFSET ?)
"""


class CaptureMethods(SqlBase):
    """The :class:`gmp_core.CaptureStore` methods of the SQL store."""

    @on_db_thread
    def add_captures(self, captures: Sequence[Capture], keep: int) -> list[int]:
        ids: list[int] = []
        with self._write():
            for start in range(0, len(captures), ROWS_PER_INSERT):
                chunk = captures[start : start + ROWS_PER_INSERT]
                params = [value for capture in chunk for value in _columns(capture)]
                rows = value_rows(len(chunk), CAPTURE_COLUMNS)
                # Ids grow in the order of VALUES; RETURNING gives them in no set order.
                ids += sorted(pk for (pk,) in self._sql(_INSERT_SQL.format(rows=rows), params))
            if self.postgres:
                self._sql("SELECT pg_advisory_xact_lock(?)", [CAPTURES_LOCK_ID])
            self._sql(_TRIM_SQL, [keep])
        return ids

    @on_db_thread
    def list_captures(
        self,
        *,
        limit: int,
        cursor: int | None = None,
        account_id: str | None = None,
        gmp_id: str | None = None,
        accounts: Sequence[str] | None = None,
    ) -> tuple[list[Capture], int | None]:
        c = self.schema.Capture
        fields = [field for field in c._meta.sorted_fields if field.name != "data"]
        query = c.select(*fields).order_by(c.pk.desc()).limit(limit)
        if cursor is not None:
            query = query.where(c.pk < cursor)
        if account_id is not None:
            query = query.where(c.account_id == account_id)
        if gmp_id is not None:
            query = query.where(c.gmp_id == gmp_id)
        if accounts is not None:
            query = query.where(c.account_id.in_(list(accounts)))
        captures = [_capture(row) for row in dicts(query)]
        next_cursor = captures[-1].id if len(captures) == limit else None
        return captures, next_cursor

    @on_db_thread
    def get_capture(self, capture_id: int) -> Capture | None:
        c = self.schema.Capture
        rows = dicts(c.select().where(c.pk == capture_id))
        return _capture(rows[0]) if rows else None

    @on_db_thread
    def delete_captures(
        self, *, account_id: str | None = None, accounts: Sequence[str] | None = None
    ) -> int:
        c = self.schema.Capture
        query = c.delete()
        if account_id is not None:
            query = query.where(c.account_id == account_id)
        if accounts is not None:
            query = query.where(c.account_id.in_(list(accounts)))
        with self._write():
            removed: int = query.execute()
        return removed

    @on_db_thread
    def purge_captures(self, captured_before: float) -> int:
        c = self.schema.Capture
        with self._write():
            removed: int = c.delete().where(c.captured_at < captured_before).execute()
        return removed


def _columns(capture: Capture) -> tuple[Any, ...]:
    return (
        capture.account_id,
        capture.gmp_id,
        capture.mail_from,
        json.dumps(capture.rcpt_to),
        capture.subject,
        capture.date,
        capture.size,
        capture.captured_at,
        capture.data or b"",
    )


def _capture(row: dict[str, Any]) -> Capture:
    data = row.get("data")
    return Capture(
        id=row["pk"],
        account_id=row["account_id"],
        gmp_id=row["gmp_id"],
        mail_from=row["mail_from"],
        rcpt_to=json.loads(row["rcpt_to"]),
        subject=row["subject"],
        date=row["date"],
        size=row["size"],
        captured_at=row["captured_at"],
        data=None if data is None else bytes(data),
    )
