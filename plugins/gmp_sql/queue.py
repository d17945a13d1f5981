"""The queue: messages in (enqueue), claimed by dispatchers under a lease, their outcomes
recorded, and when the next one falls due. Each is one statement over a whole batch.

PostgreSQL claims with ``FOR UPDATE SKIP LOCKED``: processes never wait for, or take, each
other's rows. What a message says (its payload) is kept apart from its state (``Payloads``),
so that the many state changes of a message rewrite a small row.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cached_property
from typing import Any

from gmp_core import Claim, EnqueueResult, Event, Message, Outcome, State
from gmp_sql.base import SqlBase, chunks, dumps, marks, typed_rows, value_rows
from gmp_sql.reports import ReportQueue
from gmp_sql.runner import on_db_thread

# A claim reads this many queued rows per message it may take: past an account's batch_size
# the rest of its rows are skipped, and the extra rows give other accounts their turn. Two
# costs a third less per claim than four, and with per-account caps at least as large as a
# claim (the default) the extra rows are never needed.
CANDIDATES_PER_CLAIM = 2
NEW_WORK_CHANNEL = "gmp_new_work"  # PostgreSQL NOTIFY channel: messages were queued
_OUTCOME_TYPES = (
    "TEXT",
    "TEXT",
    "DOUBLE PRECISION",
    "INTEGER",
    "TEXT",
    "DOUBLE PRECISION",
    "DOUBLE PRECISION",
)

_CLAIM_SQL = """
WITH candidates AS (
    SELECT pk, account_id, priority FROM messages
    WHERE state = 'queued' AND priority <= ?
    ORDER BY priority, pk LIMIT ?{skip_locked}
), ranked AS (
    SELECT c.pk, c.priority,
           ROW_NUMBER() OVER (PARTITION BY c.account_id ORDER BY c.priority, c.pk) AS nth,
           COALESCE(a.batch_size, ?) AS cap
    FROM candidates c LEFT JOIN accounts a ON a.id = c.account_id
)
UPDATE messages SET state = 'sending', claimed_by = ?, lease_until = ?, updated_at = ?
WHERE pk IN (SELECT pk FROM ranked WHERE nth <= cap ORDER BY priority, pk LIMIT ?)
RETURNING pk, id, account_id, priority, attempts, deferred_ts
"""

# Due again: schedules that came due, and leases that ran out (a dispatcher died).
_PROMOTE_SQL = """
UPDATE messages SET state = 'queued', claimed_by = NULL, lease_until = NULL
WHERE pk IN (
    SELECT pk FROM messages
    WHERE (state = 'scheduled' AND deferred_ts <= ?) OR (state = 'sending' AND lease_until < ?)
    {skip_locked}
)
"""

# Applies a batch of outcomes: only rows still claimed by this worker (a claim taken over
# after an expired lease belongs to its new owner).
_RECORD_SQL = """
WITH outcome(id, state, deferred_ts, attempts, error, sent_ts, error_ts) AS (VALUES {rows})
UPDATE messages SET state = outcome.state, deferred_ts = outcome.deferred_ts,
    attempts = outcome.attempts, error = outcome.error, sent_ts = outcome.sent_ts,
    error_ts = outcome.error_ts, claimed_by = NULL, lease_until = NULL, updated_at = ?,
    reported_ts = CASE WHEN outcome.state IN ('sent', 'error') THEN CAST(? AS DOUBLE PRECISION) END
FROM outcome
WHERE messages.id = outcome.id AND messages.state = 'sending' AND messages.claimed_by = ?
RETURNING messages.id
"""

# Insert new ids; replace unsent ones in place (same pk: same queue position).
_ENQUEUE_SQL = """
INSERT INTO messages (id, account_id, priority, state, attempts, deferred_ts,
                      created_at, updated_at)
VALUES {rows}
ON CONFLICT (id) DO UPDATE SET account_id = excluded.account_id,
    priority = excluded.priority, state = excluded.state, attempts = 0,
    deferred_ts = excluded.deferred_ts, claimed_by = NULL, lease_until = NULL,
    sent_ts = NULL, error_ts = NULL, error = NULL, reported_ts = NULL,
    updated_at = excluded.updated_at
WHERE messages.state NOT IN ('sending', 'sent'){same_account}
RETURNING id, pk
"""

_PAYLOAD_SQL = """
INSERT INTO message_payloads (pk, payload) VALUES {rows}
ON CONFLICT (pk) DO UPDATE SET payload = excluded.payload
"""


class Payloads(SqlBase):
    """What messages say (``Message.to_payload()`` as JSON), by the message's pk."""

    def _write_payloads(self, messages: Sequence[tuple[int, Message]]) -> None:
        for chunk in chunks(messages):
            params = [v for pk, m in chunk for v in (pk, dumps(m.to_payload()))]
            self._sql(_PAYLOAD_SQL.format(rows=value_rows(len(chunk), 2)), params)

    def _payloads(self, pks: Sequence[int]) -> dict[int, dict[str, Any]]:
        found: dict[int, dict[str, Any]] = {}
        for chunk in chunks(pks):
            rows = self._sql(
                f"SELECT pk, payload FROM message_payloads WHERE pk IN ({marks(chunk)})", chunk
            )
            found.update((pk, json.loads(payload)) for pk, payload in rows)
        return found


class QueueMethods(Payloads, ReportQueue):
    """Intake and dispatch: the hot paths of :class:`gmp_core.Store`."""

    @cached_property
    def _claim_sql(self) -> str:
        skip_locked = " FOR UPDATE SKIP LOCKED" if self.postgres else ""
        return _CLAIM_SQL.format(skip_locked=skip_locked)

    @cached_property
    def _promote_sql(self) -> str:
        return _PROMOTE_SQL.format(skip_locked="FOR UPDATE SKIP LOCKED" if self.postgres else "")

    @on_db_thread
    def enqueue(
        self,
        messages: Sequence[Message],
        events: Sequence[Event],
        now: float,
        idempotency_window: float,
        *,
        keep_other_accounts: bool = False,
    ) -> EnqueueResult:
        result = EnqueueResult()
        same_account = " AND messages.account_id = excluded.account_id"
        if not messages:
            return result
        ids = [m.id for m in messages]
        with self._write():
            tombstones = {
                row[0]
                for chunk in chunks(ids)
                for row in self._sql(
                    f"SELECT id FROM sent_ids WHERE sent_ts > ? AND id IN ({marks(chunk)})",
                    [now - idempotency_window, *chunk],
                )
            }
            fresh = [m for m in messages if m.id not in tombstones]
            queued: dict[str, int] = {}  # id -> pk
            for chunk in chunks(fresh):
                params: list[Any] = []
                for m in chunk:
                    due_later = m.deferred_ts is not None and m.deferred_ts > now
                    params += [
                        m.id,
                        m.account_id,
                        m.priority,
                        State.SCHEDULED if due_later else State.QUEUED,
                        0,
                        m.deferred_ts,
                        now,
                        now,
                    ]
                sql = _ENQUEUE_SQL.format(
                    rows=value_rows(len(chunk), 8),
                    same_account=same_account if keep_other_accounts else "",
                )
                rows = self._sql(sql, params)
                queued.update(rows)
            self._write_payloads([(queued[m.id], m) for m in fresh if m.id in queued])
            self._insert_events(e for e in events if e.message_id in queued)
            if queued:
                self._notify_new_work()
            refused = [i for i in ids if i not in queued]
            found = (
                self._sql(
                    f"SELECT id, state, account_id FROM messages WHERE id IN ({marks(refused)})",
                    refused,
                )
                if refused
                else []
            )
        states = {id_: (state, account) for id_, state, account in found}
        accounts = {m.id: m.account_id for m in messages}
        for message_id in ids:
            if message_id in queued:
                result.queued.append(message_id)
                continue
            state, account = states.get(message_id, (None, None))
            if state == State.SENDING:
                result.refused[message_id] = "in flight"
            elif state not in (None, State.SENT) and account != accounts[message_id]:
                result.refused[message_id] = "id in use by another account"
            else:
                result.refused[message_id] = "already sent"
        return result

    def _notify_new_work(self) -> None:
        """PostgreSQL: wake idle dispatchers of every process (delivered at commit)."""
        if self.postgres:
            self._sql("SELECT pg_notify(?, '')", [NEW_WORK_CHANNEL])

    @on_db_thread
    def claim(
        self,
        worker: str,
        now: float,
        *,
        limit: int,
        lease_seconds: float,
        default_batch_size: int,
        max_priority: int = 3,
    ) -> list[Claim]:
        lease_until = now + lease_seconds
        with self._write():
            self._sql(self._promote_sql, (now, now))
            rows = self._sql(
                self._claim_sql,
                (
                    max_priority,
                    limit * CANDIDATES_PER_CLAIM,
                    default_batch_size,
                    worker,
                    lease_until,
                    now,
                    limit,
                ),
            )
            payloads = self._payloads([row[0] for row in rows])
        claims = [
            Claim(
                message=Message.from_payload(
                    payloads[pk],
                    id=id_,
                    account_id=account,
                    priority=priority,
                    deferred_ts=deferred_ts,
                ),
                attempts=attempts,
                lease_until=lease_until,
                seq=pk,
            )
            for pk, id_, account, priority, attempts, deferred_ts in rows
        ]
        claims.sort(key=lambda c: (c.message.priority, c.seq))  # RETURNING has no order
        return claims

    @on_db_thread
    def renew_leases(self, worker: str, ids: Sequence[str], lease_until: float) -> None:
        with self._write():
            for chunk in chunks(ids):
                self._sql(
                    f"UPDATE messages SET lease_until = ? WHERE state = 'sending' "
                    f"AND claimed_by = ? AND id IN ({marks(chunk)})",
                    [lease_until, worker, *chunk],
                )

    @on_db_thread
    def record(self, worker: str, outcomes: Sequence[Outcome], now: float) -> list[str]:
        applied: set[str] = set()
        with self._write():
            for chunk in chunks(outcomes):
                params: list[Any] = []
                for o in chunk:
                    params += [
                        o.message_id,
                        o.state,
                        o.deferred_ts,
                        o.attempts,
                        o.error,
                        now if o.state == State.SENT else None,
                        now if o.state == State.ERROR else None,
                    ]
                sql = _RECORD_SQL.format(rows=typed_rows(len(chunk), _OUTCOME_TYPES))
                params += [now, self._reported_mark(now), worker]
                applied.update(row[0] for row in self._sql(sql, params))
            self._insert_events(
                o.event for o in outcomes if o.event is not None and o.message_id in applied
            )
        return [o.message_id for o in outcomes if o.message_id in applied]

    @on_db_thread
    def next_due(self, now: float) -> float | None:
        rows = self._sql(
            "SELECT (SELECT MIN(deferred_ts) FROM messages WHERE state = 'scheduled'), "
            "(SELECT MIN(lease_until) FROM messages WHERE state = 'sending')"
        )
        times = [t for t in rows[0] if t is not None]
        return min(times) if times else None
