"""Events and the report queue: every event written joins, in the same transaction, the queue
of each enabled reporter that wants it; reporters read their queue and acknowledge it.

:class:`ReportQueue` writes events (the queue, the accounts and the admin parts write them
too); :class:`ReportMethods` is the reporters' side of :class:`gmp_core.Store`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from gmp_core import DeliveryReport, Event
from gmp_sql.base import SqlBase, chunks, dumps, marks, value_rows
from gmp_sql.mapping import report_of
from gmp_sql.runner import on_db_thread

NEW_REPORTS_CHANNEL = "gmp_new_reports"  # PostgreSQL NOTIFY channel: reports wait for a reporter
FINAL_KINDS = ("sent", "error")

_EVENT_COLUMNS = "(message_id, account_id, ts, kind, code, detail, data)"

_PENDING_REPORTS_SQL = """
SELECT e.pk, e.message_id, e.account_id, m.priority, e.kind, e.ts, e.code, e.detail, e.data
FROM report_queue q JOIN message_events e ON e.pk = q.event_pk
LEFT JOIN messages m ON m.id = e.message_id
WHERE q.reporter = ? ORDER BY q.event_pk LIMIT ?
"""


class ReportQueue(SqlBase):
    """Writing events, each reportable one queued for the reporters that want it."""

    _reporters: dict[str, bool]  # name -> also wants deferrals (set_reporters)

    def _insert_events(self, events: Iterable[Event]) -> None:
        """Write events; reportable ones also wait in the report queue of each reporter."""
        for chunk in chunks(list(events)):
            params: list[Any] = []
            for e in chunk:
                params += [
                    e.message_id,
                    e.account_id,
                    e.ts,
                    e.kind,
                    e.code,
                    e.detail,
                    dumps(e.data),
                ]
            inserted = self._sql(
                f"INSERT INTO message_events {_EVENT_COLUMNS} VALUES {value_rows(len(chunk), 7)} "
                "RETURNING pk, kind, message_id",
                params,
            )
            self._queue_reports(inserted)

    def _queue_reports(self, events: Sequence[tuple[Any, ...]]) -> None:
        rows = [
            (name, pk, message_id)
            for pk, kind, message_id in events
            for name, wants_deferred in self._reporters.items()
            if kind in FINAL_KINDS or (kind == "deferred" and wants_deferred)
        ]
        for chunk in chunks(rows):
            self._sql(
                "INSERT INTO report_queue (reporter, event_pk, message_id) VALUES "
                + value_rows(len(chunk), 3),
                [v for row in chunk for v in row],
            )
        if rows and self.postgres:  # the process posting them may be another (at commit)
            self._sql("SELECT pg_notify(?, '')", [NEW_REPORTS_CHANNEL])

    def _reported_mark(self, now: float) -> float | None:
        """``reported_ts`` of a message as it ends: none until reporters acknowledge it."""
        return None if self._reporters else now

    def _mark_reported(self, message_ids: Iterable[str], now: float) -> None:
        """Final messages among these that no reporter waits for any more are reported."""
        for chunk in chunks(sorted(message_ids)):
            self._sql(
                "UPDATE messages SET reported_ts = ? WHERE reported_ts IS NULL "
                f"AND state IN ('sent', 'error') AND id IN ({marks(chunk)}) AND NOT EXISTS "
                "(SELECT 1 FROM report_queue q WHERE q.message_id = messages.id)",
                [now, *chunk],
            )


class ReportMethods(ReportQueue):
    """The reporters, their queues and events that change no message."""

    @on_db_thread
    def set_reporters(self, reporters: Mapping[str, bool]) -> int:
        self._reporters = dict(reporters)
        names = list(reporters)
        keep = f"WHERE reporter NOT IN ({marks(names)})" if names else ""
        with self._write():
            dropped = self._sql(f"DELETE FROM report_queue {keep} RETURNING message_id", names)
            # Their messages may now wait for nobody: they count as reported from now.
            self._mark_reported({message_id for (message_id,) in dropped}, time.time())
        return len(dropped)

    @on_db_thread
    def add_events(self, events: Sequence[Event]) -> None:
        with self._write():
            self._insert_events(events)

    @on_db_thread
    def pending_reports(self, reporter: str, limit: int) -> list[DeliveryReport]:
        rows = self._sql(_PENDING_REPORTS_SQL, (reporter, limit))
        return [report_of(*row) for row in rows]

    @on_db_thread
    def acknowledge_reports(self, reporter: str, event_ids: Sequence[int], now: float) -> None:
        with self._write():
            for chunk in chunks(event_ids):
                done = self._sql(
                    "DELETE FROM report_queue WHERE reporter = ? "
                    f"AND event_pk IN ({marks(chunk)}) RETURNING message_id",
                    [reporter, *chunk],
                )
                self._mark_reported({message_id for (message_id,) in done}, now)
