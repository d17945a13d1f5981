"""The store on peewee's asyncio layer (``playhouse.pwasyncio``), SQLite by default.

Every public method is one transaction. Writes on SQLite take the lock up front
(``BEGIN IMMEDIATE``): a deferred transaction that reads and then writes fails at once with
"database is locked" under concurrency, whatever the busy timeout. Hot paths (claim, record,
enqueue, reserve) are single SQL statements over a whole batch.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from itertools import islice
from typing import Any

import peewee as pw
from playhouse.pwasyncio import AsyncSqliteDatabase

from gmp_core import (
    Account,
    AccountDeletion,
    Claim,
    DeleteResult,
    EnqueueResult,
    Event,
    Message,
    MessageRecord,
    Outcome,
    State,
    TlsMode,
)
from gmp_sql.schema import SCHEMA_VERSION, Schema, bind_schema

ROWS_PER_STATEMENT = 400  # keeps every statement well under the bound-parameter limits
SLOT_PRUNE_INTERVAL = 600.0
UNSENT = (State.QUEUED, State.SCHEDULED, State.SENDING)

_CLAIM_SQL = """
WITH candidates AS (
    SELECT pk, account_id, priority FROM messages
    WHERE state = 'queued' AND priority <= ?
    ORDER BY priority, pk LIMIT ?
), ranked AS (
    SELECT c.pk, c.priority,
           ROW_NUMBER() OVER (PARTITION BY c.account_id ORDER BY c.priority, c.pk) AS nth,
           COALESCE(a.batch_size, ?) AS cap
    FROM candidates c LEFT JOIN accounts a ON a.id = c.account_id
)
UPDATE messages SET state = 'sending', claimed_by = ?, lease_until = ?, updated_at = ?
WHERE pk IN (SELECT pk FROM ranked WHERE nth <= cap ORDER BY priority, pk LIMIT ?)
RETURNING pk, id, account_id, priority, payload, attempts, deferred_ts
"""

# Due again: schedules that came due, and leases that ran out (a dispatcher died).
_PROMOTE_SQL = (
    "UPDATE messages SET state = 'queued', claimed_by = NULL, lease_until = NULL "
    "WHERE (state = 'scheduled' AND deferred_ts <= ?) OR (state = 'sending' AND lease_until < ?)"
)

# Applies a batch of outcomes: only rows still claimed by this worker (a claim taken over
# after an expired lease belongs to its new owner).
_RECORD_SQL = """
WITH outcome(id, state, deferred_ts, attempts, error, sent_ts, error_ts) AS (VALUES {rows})
UPDATE messages SET state = outcome.state, deferred_ts = outcome.deferred_ts,
    attempts = outcome.attempts, error = outcome.error, sent_ts = outcome.sent_ts,
    error_ts = outcome.error_ts, reported_ts = NULL, claimed_by = NULL, lease_until = NULL,
    updated_at = ?
FROM outcome
WHERE messages.id = outcome.id AND messages.state = 'sending' AND messages.claimed_by = ?
RETURNING messages.id
"""

# Insert new ids; replace unsent ones in place (same pk: same queue position).
_ENQUEUE_SQL = """
INSERT INTO messages (id, account_id, priority, state, payload, attempts, deferred_ts,
                      created_at, updated_at)
VALUES {rows}
ON CONFLICT (id) DO UPDATE SET account_id = excluded.account_id,
    priority = excluded.priority, state = excluded.state, payload = excluded.payload,
    attempts = 0, deferred_ts = excluded.deferred_ts, claimed_by = NULL, lease_until = NULL,
    sent_ts = NULL, error_ts = NULL, error = NULL, reported_ts = NULL,
    updated_at = excluded.updated_at
WHERE messages.state NOT IN ('sending', 'sent')
RETURNING id
"""

_EVENT_COLUMNS = "(message_id, account_id, ts, kind, code, detail, data)"


class SqlStore:
    """A :class:`gmp_core.Store` on a peewee async database."""

    def __init__(self, db: AsyncSqliteDatabase) -> None:
        self.db = db
        self.schema: Schema = bind_schema(db)
        self._last_slot_prune = 0.0

    # ------------------------------------------------------------------ plumbing

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[None]:
        """Scope a pooled connection to one operation (a long-lived task would otherwise keep
        its connection until it ends)."""
        async with self.db:
            yield

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[None]:
        async with self.db, self.db.atomic("IMMEDIATE"):
            yield

    async def _sql(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cursor = await self.db.aexecute_sql(sql, params)
        rows: list[tuple[Any, ...]] = cursor.fetchall()
        return rows

    async def _query(self, query: pw.Query) -> Any:
        return await self.db.aexecute(query)

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        async with self._connection():
            await self.db.acreate_tables(self.schema.models, safe=True)
            version = self.schema.Version
            async with self.db.atomic("IMMEDIATE"):
                if not await self.db.exists(version.select()):
                    await self._query(version.insert(version=SCHEMA_VERSION))

    async def close(self) -> None:
        await self.db.close_pool()

    async def ping(self) -> None:
        async with self._connection():
            await self._sql("SELECT 1")

    # ------------------------------------------------------------------ intake

    async def enqueue(self, messages: Sequence[Message], events: Sequence[Event],
                      now: float, idempotency_window: float) -> EnqueueResult:
        result = EnqueueResult()
        if not messages:
            return result
        ids = [m.id for m in messages]
        async with self._write():
            tombstones = {row[0] for chunk in _chunks(ids) for row in await self._sql(
                f"SELECT id FROM sent_ids WHERE sent_ts > ? AND id IN ({_marks(chunk)})",
                [now - idempotency_window, *chunk])}
            fresh = [m for m in messages if m.id not in tombstones]
            queued: set[str] = set()
            for chunk in _chunks(fresh):
                params: list[Any] = []
                for m in chunk:
                    due_later = m.deferred_ts is not None and m.deferred_ts > now
                    params += [m.id, m.account_id, m.priority,
                               State.SCHEDULED if due_later else State.QUEUED,
                               _dumps(m.to_payload()), 0, m.deferred_ts, now, now]
                sql = _ENQUEUE_SQL.format(rows=_value_rows(len(chunk), 9))
                queued.update(row[0] for row in await self._sql(sql, params))
            await self._insert_events(e for e in events if e.message_id in queued)
            refused = [i for i in ids if i not in queued]
            states = dict(await self._sql(
                f"SELECT id, state FROM messages WHERE id IN ({_marks(refused)})", refused)
            ) if refused else {}
        for message_id in ids:
            if message_id in queued:
                result.queued.append(message_id)
            else:
                in_flight = states.get(message_id) == State.SENDING
                result.refused[message_id] = "in flight" if in_flight else "already sent"
        return result

    # ------------------------------------------------------------------ dispatch

    async def claim(self, worker: str, now: float, *, limit: int, lease_seconds: float,
                    default_batch_size: int, max_priority: int = 3) -> list[Claim]:
        lease_until = now + lease_seconds
        async with self._write():
            await self._sql(_PROMOTE_SQL, (now, now))
            rows = await self._sql(_CLAIM_SQL, (max_priority, limit * 4, default_batch_size,
                                                worker, lease_until, now, limit))
        claims = [
            Claim(
                message=Message.from_payload(json.loads(payload), id=id_, account_id=account,
                                             priority=priority, deferred_ts=deferred_ts),
                attempts=attempts, lease_until=lease_until, seq=pk)
            for pk, id_, account, priority, payload, attempts, deferred_ts in rows
        ]
        claims.sort(key=lambda c: (c.message.priority, c.seq))  # RETURNING has no order
        return claims

    async def renew_leases(self, worker: str, ids: Sequence[str], lease_until: float) -> None:
        async with self._write():
            for chunk in _chunks(ids):
                await self._sql(
                    f"UPDATE messages SET lease_until = ? WHERE state = 'sending' "
                    f"AND claimed_by = ? AND id IN ({_marks(chunk)})",
                    [lease_until, worker, *chunk])

    async def record(self, worker: str, outcomes: Sequence[Outcome], now: float) -> list[str]:
        applied: set[str] = set()
        async with self._write():
            for chunk in _chunks(outcomes):
                params: list[Any] = []
                for o in chunk:
                    params += [o.message_id, o.state, o.deferred_ts, o.attempts, o.error,
                               now if o.state == State.SENT else None,
                               now if o.state == State.ERROR else None]
                sql = _RECORD_SQL.format(rows=_value_rows(len(chunk), 7))
                applied.update(row[0] for row in await self._sql(sql, [*params, now, worker]))
            await self._insert_events(o.event for o in outcomes
                                      if o.event is not None and o.message_id in applied)
        return [o.message_id for o in outcomes if o.message_id in applied]

    async def next_due(self, now: float) -> float | None:
        async with self._connection():
            rows = await self._sql(
                "SELECT (SELECT MIN(deferred_ts) FROM messages WHERE state = 'scheduled'), "
                "(SELECT MIN(lease_until) FROM messages WHERE state = 'sending')")
        times = [t for t in rows[0] if t is not None]
        return min(times) if times else None

    async def _insert_events(self, events: Iterable[Event]) -> None:
        for chunk in _chunks(list(events)):
            params: list[Any] = []
            for e in chunk:
                params += [e.message_id, e.account_id, e.ts, e.kind, e.code, e.detail,
                           _dumps(e.data)]
            await self._sql(f"INSERT INTO message_events {_EVENT_COLUMNS} VALUES "
                            f"{_value_rows(len(chunk), 7)}", params)

    # ------------------------------------------------------------------ rate limits

    async def reserve_sends(self, account_id: str, limits: Sequence[tuple[int, int]],
                            wanted: int, now: float) -> tuple[int, list[float]]:
        async with self._write():
            await self._prune_slots(now)
            counts = {}
            for window, _ in limits:
                rows = await self._sql("SELECT COUNT(*) FROM send_slots WHERE account_id = ? "
                                       "AND ts > ?", (account_id, now - window))
                counts[window] = rows[0][0]
            granted = max(0, min(wanted, *(limit - counts[w] for w, limit in limits)))
            for chunk in _chunks([now] * granted):
                await self._sql(f"INSERT INTO send_slots (account_id, ts) VALUES "
                                f"{_value_rows(len(chunk), 2)}",
                                [v for ts in chunk for v in (account_id, ts)])
            refused = wanted - granted
            retry_at = [now] * refused
            for window, limit in limits:
                if refused == 0 or counts[window] + granted < limit:
                    continue
                # The j-th refused message may go when the j-th oldest slot leaves the window.
                rows = await self._sql(
                    "SELECT ts FROM send_slots WHERE account_id = ? AND ts > ? "
                    "ORDER BY ts LIMIT ?", (account_id, now - window, refused))
                frees = [ts + window for (ts,) in rows]
                frees += [now + window] * (refused - len(frees))
                retry_at = [max(a, b) for a, b in zip(retry_at, frees, strict=True)]
        return granted, retry_at

    async def _prune_slots(self, now: float) -> None:
        if now - self._last_slot_prune > SLOT_PRUNE_INTERVAL:
            self._last_slot_prune = now
            await self._sql("DELETE FROM send_slots WHERE ts < ?", (now - 86400,))

    # ------------------------------------------------------------------ accounts

    async def put_account(self, account: Account, now: float) -> None:
        row = self.schema.Account
        values = _account_columns(account)
        values.update(created_at=now, updated_at=now)
        update = {k: v for k, v in values.items() if k not in ("id", "created_at")}
        async with self._write():
            await self._query(row.insert(**values).on_conflict(
                conflict_target=[row.id], update=update))

    async def get_accounts(self, ids: Sequence[str]) -> dict[str, Account]:
        row = self.schema.Account
        ids = list(ids)
        async with self._connection():
            found = [] if not ids else await self.db.list(
                row.select().where(row.id.in_(ids)).dicts())
        return {r["id"]: _account(r) for r in found}

    async def list_accounts(self) -> list[Account]:
        row = self.schema.Account
        async with self._connection():
            rows = await self.db.list(row.select().order_by(row.id).dicts())
        return [_account(r) for r in rows]

    async def delete_account(self, account_id: str, *, force: bool,
                             now: float) -> AccountDeletion:
        msg, account = self.schema.Message, self.schema.Account
        async with self._write():
            if not await self.db.exists(account.select().where(account.id == account_id)):
                return AccountDeletion(found=False)
            unsent_rows = await self._sql(
                "SELECT id, state FROM messages WHERE account_id = ? AND state IN (?, ?, ?)",
                (account_id, *UNSENT))
            if unsent_rows and not force:
                return AccountDeletion(found=True, unsent=len(unsent_rows))
            # Messages being sent right now finish; their next attempt finds no account.
            waiting = [id_ for id_, state in unsent_rows if state != State.SENDING]
            for chunk in _chunks(waiting):
                await self._query(msg.update(
                    state=State.ERROR, error="account deleted", error_ts=now, updated_at=now,
                    reported_ts=None).where(msg.id.in_(chunk)))
            events = [Event("error", id_, account_id, now, detail="account deleted")
                      for id_ in waiting]
            await self._insert_events(events)
            await self._query(account.delete().where(account.id == account_id))
        return AccountDeletion(found=True, deleted=True, unsent=len(unsent_rows), events=events)

    # ------------------------------------------------------------------ admin

    async def list_messages(self, *, status: str | None, account_id: str | None, limit: int,
                            cursor: int | None) -> tuple[list[MessageRecord], int | None]:
        msg = self.schema.Message
        query = msg.select().order_by(msg.pk).limit(limit)
        if status:
            query = query.where(msg.state == status)
        if account_id:
            query = query.where(msg.account_id == account_id)
        if cursor is not None:
            query = query.where(msg.pk > cursor)
        async with self._connection():
            rows = await self.db.list(query.dicts())
        next_cursor = rows[-1]["pk"] if len(rows) == limit else None
        return [_record(r) for r in rows], next_cursor

    async def get_message(self, message_id: str) -> tuple[MessageRecord, list[Event]] | None:
        msg, event = self.schema.Message, self.schema.Event
        async with self._connection():
            rows = await self.db.list(msg.select().where(msg.id == message_id).dicts())
            if not rows:
                return None
            events = await self.db.list(event.select().where(
                event.message_id == message_id).order_by(event.pk).dicts())
        record = _record(rows[0])
        record.payload = json.loads(rows[0]["payload"])
        return record, [_event(e) for e in events]

    async def delete_messages(self, ids: Sequence[str]) -> DeleteResult:
        result = DeleteResult()
        now = time.time()
        async with self._write():
            states: dict[str, tuple[str, float | None]] = {}
            for chunk in _chunks(ids):
                rows = await self._sql(f"SELECT id, state, sent_ts FROM messages WHERE id IN "
                                       f"({_marks(chunk)})", chunk)
                states.update((id_, (state, sent_ts)) for id_, state, sent_ts in rows)
            for id_ in ids:
                state = states.get(id_, (None, None))[0]
                if state is None:
                    result.not_found.append(id_)
                elif state == State.SENDING:
                    result.in_flight.append(id_)
                else:
                    result.removed.append(id_)
            sent = [(id_, states[id_][1] or now) for id_ in result.removed
                    if states[id_][0] == State.SENT]
            await self._remember_sent(sent)
            await self._delete_rows(result.removed)
        return result

    async def cleanup(self, reported_before: float, now: float,
                      idempotency_window: float) -> int:
        async with self._write():
            rows = await self._sql(
                "SELECT id, state, sent_ts FROM messages WHERE state IN ('sent', 'error') "
                "AND reported_ts IS NOT NULL AND reported_ts < ?", (reported_before,))
            await self._remember_sent([(id_, ts) for id_, state, ts in rows if state == "sent"])
            await self._delete_rows([id_ for id_, _, _ in rows])
            await self._sql("DELETE FROM sent_ids WHERE sent_ts <= ?", (now - idempotency_window,))
        return len(rows)

    async def _remember_sent(self, sent: Sequence[tuple[str, float]]) -> None:
        for chunk in _chunks(sent):
            await self._sql(f"INSERT INTO sent_ids (id, sent_ts) VALUES "
                            f"{_value_rows(len(chunk), 2)} ON CONFLICT (id) DO NOTHING",
                            [v for pair in chunk for v in pair])

    async def _delete_rows(self, ids: Sequence[str]) -> None:
        for chunk in _chunks(ids):
            await self._sql(f"DELETE FROM message_events WHERE message_id IN ({_marks(chunk)})",
                            chunk)
            await self._sql(f"DELETE FROM messages WHERE id IN ({_marks(chunk)})", chunk)

    async def queue_counts(self) -> dict[str, int]:
        async with self._connection():
            rows = await self._sql("SELECT state, COUNT(*) FROM messages GROUP BY state")
        counts = dict.fromkeys(State, 0)
        counts.update(rows)
        return {str(state): count for state, count in counts.items()}

    async def get_flag(self, name: str) -> str | None:
        flag = self.schema.Flag
        async with self._connection():
            row = await self.db.list(flag.select(flag.value).where(flag.name == name).tuples())
        return row[0][0] if row else None

    async def set_flag(self, name: str, value: str) -> None:
        flag = self.schema.Flag
        async with self._write():
            await self._query(flag.insert(name=name, value=value).on_conflict(
                conflict_target=[flag.name], update={flag.value: value}))


# ---------------------------------------------------------------------- helpers

def _chunks(items: Sequence[Any], size: int = ROWS_PER_STATEMENT) -> Iterable[list[Any]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _marks(items: Sequence[Any]) -> str:
    return ", ".join("?" * len(items))


def _value_rows(rows: int, columns: int) -> str:
    row = "(" + ", ".join("?" * columns) + ")"
    return ", ".join([row] * rows)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


_ACCOUNT_FIELDS = ("id", "host", "port", "user", "password", "tls", "limit_per_minute",
                   "limit_per_hour", "limit_per_day", "limit_behavior", "batch_size",
                   "max_connections", "ttl", "transport")


def _account_columns(account: Account) -> dict[str, Any]:
    values = {name: getattr(account, name) for name in _ACCOUNT_FIELDS}
    values["tls"] = str(account.tls)
    return values


def _account(row: dict[str, Any]) -> Account:
    values = {name: row[name] for name in _ACCOUNT_FIELDS}
    values["tls"] = TlsMode(row["tls"])
    return Account(**values, created_at=row["created_at"], updated_at=row["updated_at"])


def _record(row: dict[str, Any]) -> MessageRecord:
    return MessageRecord(
        id=row["id"], account_id=row["account_id"], priority=row["priority"],
        status=row["state"], deferred_ts=row["deferred_ts"], sent_ts=row["sent_ts"],
        error_ts=row["error_ts"], error=row["error"], reported_ts=row["reported_ts"],
        created_at=row["created_at"], updated_at=row["updated_at"], attempts=row["attempts"])


def _event(row: dict[str, Any]) -> Event:
    return Event(kind=row["kind"], message_id=row["message_id"], account_id=row["account_id"],
                 ts=row["ts"], code=row["code"], detail=row["detail"],
                 data=json.loads(row["data"]))
