"""What the service's operations show and remove: pages of messages, one message with its
history, deletions, retention, counts and the queue's depth for monitoring.

Deleting a sent message, or purging one, keeps its id in ``sent_ids`` (a tombstone) for the
idempotency window, so that the client sending it again still hears "already sent".
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from gmp_core import DeleteResult, Event, MessageRecord, QueueDepth, State
from gmp_sql.base import UNSENT, chunks, dicts, marks, value_rows
from gmp_sql.mapping import event_of, record_of
from gmp_sql.queue import Payloads
from gmp_sql.runner import on_db_thread


class AdminMethods(Payloads):
    """Listing, reading, deleting and counting messages (:class:`gmp_core.Store`)."""

    @on_db_thread
    def list_messages(
        self,
        *,
        status: str | None,
        account_id: str | None,
        limit: int,
        cursor: int | None,
        accounts: Sequence[str] | None = None,
    ) -> tuple[list[MessageRecord], int | None]:
        msg = self.schema.Message
        query = msg.select().order_by(msg.pk).limit(limit)
        if status:
            query = query.where(msg.state == status)
        if account_id:
            query = query.where(msg.account_id == account_id)
        if accounts is not None:
            query = query.where(msg.account_id.in_(list(accounts)))
        if cursor is not None:
            query = query.where(msg.pk > cursor)
        rows = dicts(query)
        next_cursor = rows[-1]["pk"] if len(rows) == limit else None
        return [record_of(r) for r in rows], next_cursor

    @on_db_thread
    def get_message(self, message_id: str) -> tuple[MessageRecord, list[Event]] | None:
        msg, event = self.schema.Message, self.schema.Event
        rows = dicts(msg.select().where(msg.id == message_id))
        if not rows:
            return None
        events = dicts(event.select().where(event.message_id == message_id).order_by(event.pk))
        record = record_of(rows[0])
        record.payload = self._payloads([rows[0]["pk"]]).get(rows[0]["pk"])
        return record, [event_of(e) for e in events]

    @on_db_thread
    def accounts_of(self, message_ids: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for chunk in chunks(message_ids):
            rows = self._sql(
                f"SELECT id, account_id FROM messages WHERE id IN ({marks(chunk)})", chunk
            )
            found.update(rows)
        return found

    @on_db_thread
    def delete_messages(self, ids: Sequence[str]) -> DeleteResult:
        result = DeleteResult()
        now = time.time()
        with self._write():
            states: dict[str, tuple[str, float | None]] = {}
            for chunk in chunks(ids):
                rows = self._sql(
                    f"SELECT id, state, sent_ts FROM messages WHERE id IN ({marks(chunk)})", chunk
                )
                states.update((id_, (state, sent_ts)) for id_, state, sent_ts in rows)
            for id_ in ids:
                state = states.get(id_, (None, None))[0]
                if state is None:
                    result.not_found.append(id_)
                elif state == State.SENDING:
                    result.in_flight.append(id_)
                else:
                    result.removed.append(id_)
            sent = [
                (id_, states[id_][1] or now)
                for id_ in result.removed
                if states[id_][0] == State.SENT
            ]
            self._remember_sent(sent)
            self._delete_rows(result.removed)
        return result

    @on_db_thread
    def cleanup(self, reported_before: float, now: float, idempotency_window: float) -> int:
        with self._write():
            rows = self._sql(
                "SELECT id, state, sent_ts FROM messages WHERE state IN ('sent', 'error') "
                "AND reported_ts IS NOT NULL AND reported_ts < ?",
                (reported_before,),
            )
            self._remember_sent([(id_, ts) for id_, state, ts in rows if state == "sent"])
            self._delete_rows([id_ for id_, _, _ in rows])
            self._sql("DELETE FROM sent_ids WHERE sent_ts <= ?", (now - idempotency_window,))
        return len(rows)

    def _remember_sent(self, sent: Sequence[tuple[str, float]]) -> None:
        for chunk in chunks(sent):
            self._sql(
                f"INSERT INTO sent_ids (id, sent_ts) VALUES "
                f"{value_rows(len(chunk), 2)} ON CONFLICT (id) DO NOTHING",
                [v for pair in chunk for v in pair],
            )

    def _delete_rows(self, ids: Sequence[str]) -> None:
        for chunk in chunks(ids):
            self._sql(
                f"DELETE FROM message_payloads WHERE pk IN (SELECT pk FROM messages "
                f"WHERE id IN ({marks(chunk)}))",
                chunk,
            )
            self._sql(f"DELETE FROM message_events WHERE message_id IN ({marks(chunk)})", chunk)
            self._sql(f"DELETE FROM report_queue WHERE message_id IN ({marks(chunk)})", chunk)
            self._sql(f"DELETE FROM messages WHERE id IN ({marks(chunk)})", chunk)

    @on_db_thread
    def queue_counts(self) -> dict[str, int]:
        rows = self._sql("SELECT state, COUNT(*) FROM messages GROUP BY state")
        counts = dict.fromkeys(State, 0)
        counts.update(rows)
        return {str(state): count for state, count in counts.items()}

    @on_db_thread
    def queue_depth(self, now: float) -> QueueDepth:
        # One statement per state, the state written out: SQLite uses a partial index only
        # when the query's WHERE names the same constant as the index's.
        depth = QueueDepth()
        due_since = []
        for state in UNSENT:
            rows = self._sql(
                "SELECT priority, COUNT(*), MIN(COALESCE(deferred_ts, created_at)) "
                f"FROM messages WHERE state = '{state}' GROUP BY priority"
            )
            for priority, count, earliest in rows:
                depth.counts[(str(state), priority)] = count
                if state == State.QUEUED or (state == State.SCHEDULED and earliest <= now):
                    due_since.append(earliest)
        depth.oldest_due = min(due_since, default=None)
        return depth
