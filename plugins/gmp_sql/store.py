"""The store on peewee: SQLite by default, PostgreSQL for several processes.

Every public method is one transaction, written as plain synchronous peewee code and run by
the runner (``runner.py``): a database thread for SQLite, peewee's greenlet bridge over
asyncpg for PostgreSQL. Hot paths (claim, record, enqueue, reserve) are single SQL statements
over a whole batch. The SQL is shared; where the dialects differ:

* SQLite writes take the lock up front (``BEGIN IMMEDIATE``): a deferred transaction that
  reads and then writes fails at once with "database is locked" when another process writes;
* PostgreSQL claims with ``FOR UPDATE SKIP LOCKED`` (processes never wait for, or take, each
  other's rows), serialises rate-limit reservations per account with a row lock, and needs
  explicit types for parameters in ``VALUES`` lists (``CAST``, which SQLite accepts too).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from itertools import islice
from typing import Any

import peewee as pw

from gmp_core import (
    Account,
    AccountDeletion,
    Claim,
    DeleteResult,
    DeliveryReport,
    EnqueueResult,
    Event,
    Message,
    MessageRecord,
    Outcome,
    QueueDepth,
    State,
    TlsMode,
    VolumeRecord,
)
from gmp_sql.captures import CaptureMethods
from gmp_sql.listen import Listener
from gmp_sql.runner import DatabaseThread, Runner, on_db_thread
from gmp_sql.schema import MIGRATIONS, SCHEMA_VERSION, Schema, bind_schema
from gmp_sql.secrets import (
    NO_KEY_TO_ROTATE_TO,
    Keyring,
    Place,
    SecretError,
    account_place,
    is_sealed,
    is_secret_field,
    volume_place,
)

secrets_log = logging.getLogger("gmp.secrets")

ROWS_PER_STATEMENT = 400  # keeps every statement well under the bound-parameter limits
SLOT_PRUNE_INTERVAL = 600.0
# A claim reads this many queued rows per message it may take: past an account's batch_size
# the rest of its rows are skipped, and the extra rows give other accounts their turn. Two
# costs a third less per claim than four, and with per-account caps at least as large as a
# claim (the default) the extra rows are never needed.
CANDIDATES_PER_CLAIM = 2
UNSENT = (State.QUEUED, State.SCHEDULED, State.SENDING)
SCHEMA_LOCK_ID = 0x676D7001  # PostgreSQL advisory lock taken while creating the schema
NEW_WORK_CHANNEL = "gmp_new_work"  # PostgreSQL NOTIFY channel: messages were queued
NEW_REPORTS_CHANNEL = "gmp_new_reports"  # and: reports wait for a reporter
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

# Takes a lease that is free or has run out, or renews one's own: a row comes back only then.
_LEASE_SQL = """
INSERT INTO leases (name, holder, expires) VALUES (?, ?, ?)
ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires = excluded.expires
WHERE leases.holder = excluded.holder OR leases.expires < ?
RETURNING holder
"""

_PAYLOAD_SQL = """
INSERT INTO message_payloads (pk, payload) VALUES {rows}
ON CONFLICT (pk) DO UPDATE SET payload = excluded.payload
"""

_EVENT_COLUMNS = "(message_id, account_id, ts, kind, code, detail, data)"
FINAL_KINDS = ("sent", "error")

_PENDING_REPORTS_SQL = """
SELECT e.pk, e.message_id, e.account_id, m.priority, e.kind, e.ts, e.code, e.detail, e.data
FROM report_queue q JOIN message_events e ON e.pk = q.event_pk
LEFT JOIN messages m ON m.id = e.message_id
WHERE q.reporter = ? ORDER BY q.event_pk LIMIT ?
"""


class SqlStore(CaptureMethods):
    """A :class:`gmp_core.Store` on a peewee database (SQLite or PostgreSQL), which also
    keeps captured mail (:class:`gmp_core.CaptureStore`, in ``captures.py``)."""

    def __init__(
        self,
        db: pw.Database,
        runner: Runner | None = None,
        *,
        listen_url: str | None = None,
        keyring: Keyring | None = None,
    ) -> None:
        self.db = db
        self.keyring = keyring or Keyring()  # no key: secrets in clear (warned at open)
        self._listen_url = listen_url
        self._listener: Listener | None = None
        self.runner: Runner = runner or DatabaseThread(db)
        self.schema: Schema = bind_schema(db)
        self.postgres = isinstance(db, pw.PostgresqlDatabase)
        skip_locked = "FOR UPDATE SKIP LOCKED" if self.postgres else ""
        self._claim_sql = _CLAIM_SQL.format(skip_locked=f" {skip_locked}" if skip_locked else "")
        self._promote_sql = _PROMOTE_SQL.format(skip_locked=skip_locked)
        self._last_slot_prune = 0.0
        self._reporters: dict[str, bool] = {}  # name -> also wants deferrals
        self.write_failure: str | None = None  # set by on_db_thread, cleared by ping

    # ------------------------------------------------------------------ plumbing

    def _write(self) -> AbstractContextManager[Any]:
        """A write transaction; on SQLite it takes the write lock at BEGIN."""
        return self.db.atomic() if self.postgres else self.db.atomic("IMMEDIATE")

    def _sql(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if self.postgres:  # our SQL marks parameters with "?"; peewee's PostgreSQL uses %s
            sql = sql.replace("?", "%s")
        rows: list[tuple[Any, ...]] = self.db.execute_sql(sql, params).fetchall()
        return rows

    # ------------------------------------------------------------------ lifecycle

    @on_db_thread
    def open(self) -> None:
        if not self.postgres:
            self.db.connect(reuse_if_open=True)
        with self._write():
            if self.postgres:  # processes starting together create the schema one at a time
                self._sql("SELECT pg_advisory_xact_lock(?)", [SCHEMA_LOCK_ID])
            # Up to date: no DDL at all. Even a CREATE ... IF NOT EXISTS of an index takes
            # table locks, and deadlocked a process restarting beside busy ones.
            if self._schema_version() != SCHEMA_VERSION:
                self.db.create_tables(self.schema.models, safe=True)
                self._migrate()
        self._check_secrets()

    def _schema_version(self) -> int | None:
        exists = (  # in the schema the connection uses (search_path), not only "public"
            "SELECT to_regclass('gmp_schema') IS NOT NULL"
            if self.postgres
            else "SELECT COUNT(*) > 0 FROM sqlite_master WHERE name = 'gmp_schema'"
        )
        if not self._sql(exists)[0][0]:
            return None
        version: int | None = self._sql("SELECT MAX(version) FROM gmp_schema")[0][0]
        return version

    def _migrate(self) -> None:
        """Bring an older database up to ``SCHEMA_VERSION``, one step at a time. New tables and
        indexes come from ``create_tables`` above; a step changes what is already there."""
        version = self.schema.Version
        rows = self._sql("SELECT MAX(version) FROM gmp_schema")
        current = rows[0][0]
        if current is None:  # a new database: created at the current version
            version.insert(version=SCHEMA_VERSION).execute()
            return
        for step in range(current + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS.get(step, ()):
                self._sql(statement)
            version.insert(version=step).execute()

    def _check_secrets(self) -> None:
        """At start-up, open every stored secret once: a wrong or missing key stops the
        start naming what it cannot open, instead of failing sends later. Also say plainly
        when secrets are, or are still, stored in clear."""
        problems, clear = [], 0
        for place, stored in self._stored_secrets():
            try:
                self.keyring.open(stored, place)
            except SecretError as exc:
                problems.append(str(exc))
            clear += not is_sealed(stored)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise SecretError(problems[0] + more)
        if not self.keyring.encrypts:
            secrets_log.warning(
                "no secrets key is configured ([secrets] key or key_file, GMP_SECRETS_KEY): "
                "SMTP passwords and volume credentials are stored in clear"
            )
        elif clear:
            secrets_log.warning(
                "%d stored secret(s) still in clear: run 'gmp secrets rotate' to encrypt them",
                clear,
            )
        else:
            secrets_log.info("stored secrets are encrypted (key %s)", self.keyring.current_id)

    def _stored_secrets(self) -> Iterable[tuple[Place, str]]:
        """Every secret in the store, as stored, with where it lives."""
        for account_id, password in self._sql(
            "SELECT id, password FROM accounts WHERE password <> '' ORDER BY id"
        ):
            yield account_place(account_id), password
        for name, owner, config in self._sql(
            "SELECT name, owner, config FROM volumes ORDER BY name, owner"
        ):
            values = json.loads(config)
            for field in _secret_fields(values):
                yield volume_place(name, owner or None, field), values[field]

    @on_db_thread
    def rotate_secrets(self) -> tuple[int, int]:
        """Seal every stored secret with the current key: values in clear and values sealed
        with an older key. Returns (values re-sealed, values already current).

        Each row is rewritten only if it still holds what was read (compare and set), so a
        password changed over the API meanwhile is never put back to its old value; readers
        meanwhile see the old or the new text, and can open both. A row changed meanwhile is
        left as it now is (the change was sealed by whoever made it) and not counted."""
        if not self.keyring.encrypts:
            raise SecretError(NO_KEY_TO_ROTATE_TO)
        resealed = current = 0
        with self._write():
            for account_id, stored in self._sql(
                "SELECT id, password FROM accounts WHERE password <> ''"
            ):
                if self.keyring.is_current(stored):
                    current += 1
                    continue
                place = account_place(account_id)
                sealed = self.keyring.seal(self.keyring.open(stored, place), place)
                resealed += len(
                    self._sql(
                        "UPDATE accounts SET password = ? WHERE id = ? AND password = ? "
                        "RETURNING id",
                        (sealed, account_id, stored),
                    )
                )
            for name, owner, stored_config in self._sql("SELECT name, owner, config FROM volumes"):
                config = json.loads(stored_config)
                fields = _secret_fields(config)
                stale = [f for f in fields if not self.keyring.is_current(config[f])]
                current += len(fields) - len(stale)
                if not stale:
                    continue
                for field in stale:
                    place = volume_place(name, owner or None, field)
                    config[field] = self.keyring.seal(
                        self.keyring.open(config[field], place), place
                    )
                changed = self._sql(
                    "UPDATE volumes SET config = ? WHERE name = ? AND owner = ? AND config = ? "
                    "RETURNING name",
                    (_dumps(config), name, owner, stored_config),
                )
                resealed += len(stale) if changed else 0
        return resealed, current

    async def watch(
        self, wake: Callable[[], None], reports: Callable[[], None] | None = None
    ) -> None:
        if self._listen_url is not None:
            channels = {NEW_WORK_CHANNEL: wake}
            if reports is not None:
                channels[NEW_REPORTS_CHANNEL] = reports
            self._listener = Listener(self._listen_url, channels)
            self._listener.start()

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.close()
        await self.runner.close()

    async def ping(self) -> None:
        """Reach the database; after a write failed for lack of space, write (a flag) until
        that works again: readiness stays down meanwhile."""
        await self._select_one()
        if self.write_failure is not None:
            await self.set_flag("write_probe", repr(time.time()))  # raises while still full
            self.write_failure = None

    @on_db_thread
    def _select_one(self) -> None:
        self._sql("SELECT 1")

    # ------------------------------------------------------------------ intake

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
                for chunk in _chunks(ids)
                for row in self._sql(
                    f"SELECT id FROM sent_ids WHERE sent_ts > ? AND id IN ({_marks(chunk)})",
                    [now - idempotency_window, *chunk],
                )
            }
            fresh = [m for m in messages if m.id not in tombstones]
            queued: dict[str, int] = {}  # id -> pk
            for chunk in _chunks(fresh):
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
                    rows=_value_rows(len(chunk), 8),
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
                    f"SELECT id, state, account_id FROM messages WHERE id IN ({_marks(refused)})",
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

    # ------------------------------------------------------------------ dispatch

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
            for chunk in _chunks(ids):
                self._sql(
                    f"UPDATE messages SET lease_until = ? WHERE state = 'sending' "
                    f"AND claimed_by = ? AND id IN ({_marks(chunk)})",
                    [lease_until, worker, *chunk],
                )

    @on_db_thread
    def record(self, worker: str, outcomes: Sequence[Outcome], now: float) -> list[str]:
        applied: set[str] = set()
        with self._write():
            for chunk in _chunks(outcomes):
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
                sql = _RECORD_SQL.format(rows=_typed_rows(len(chunk), _OUTCOME_TYPES))
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

    def _notify_new_work(self) -> None:
        """PostgreSQL: wake idle dispatchers of every process (delivered at commit)."""
        if self.postgres:
            self._sql("SELECT pg_notify(?, '')", [NEW_WORK_CHANNEL])

    def _write_payloads(self, messages: Sequence[tuple[int, Message]]) -> None:
        for chunk in _chunks(messages):
            params = [v for pk, m in chunk for v in (pk, _dumps(m.to_payload()))]
            self._sql(_PAYLOAD_SQL.format(rows=_value_rows(len(chunk), 2)), params)

    def _payloads(self, pks: Sequence[int]) -> dict[int, dict[str, Any]]:
        found: dict[int, dict[str, Any]] = {}
        for chunk in _chunks(pks):
            rows = self._sql(
                f"SELECT pk, payload FROM message_payloads WHERE pk IN ({_marks(chunk)})", chunk
            )
            found.update((pk, json.loads(payload)) for pk, payload in rows)
        return found

    def _insert_events(self, events: Iterable[Event]) -> None:
        """Write events; reportable ones also wait in the report queue of each reporter."""
        for chunk in _chunks(list(events)):
            params: list[Any] = []
            for e in chunk:
                params += [
                    e.message_id,
                    e.account_id,
                    e.ts,
                    e.kind,
                    e.code,
                    e.detail,
                    _dumps(e.data),
                ]
            inserted = self._sql(
                f"INSERT INTO message_events {_EVENT_COLUMNS} VALUES {_value_rows(len(chunk), 7)} "
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
        for chunk in _chunks(rows):
            self._sql(
                "INSERT INTO report_queue (reporter, event_pk, message_id) VALUES "
                + _value_rows(len(chunk), 3),
                [v for row in chunk for v in row],
            )
        if rows and self.postgres:  # the process posting them may be another (at commit)
            self._sql("SELECT pg_notify(?, '')", [NEW_REPORTS_CHANNEL])

    def _reported_mark(self, now: float) -> float | None:
        """``reported_ts`` of a message as it ends: none until reporters acknowledge it."""
        return None if self._reporters else now

    # ------------------------------------------------------------------ reports

    @on_db_thread
    def set_reporters(self, reporters: Mapping[str, bool]) -> int:
        self._reporters = dict(reporters)
        names = list(reporters)
        keep = f"WHERE reporter NOT IN ({_marks(names)})" if names else ""
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
        return [_report(*row) for row in rows]

    @on_db_thread
    def acknowledge_reports(self, reporter: str, event_ids: Sequence[int], now: float) -> None:
        with self._write():
            for chunk in _chunks(event_ids):
                done = self._sql(
                    "DELETE FROM report_queue WHERE reporter = ? "
                    f"AND event_pk IN ({_marks(chunk)}) RETURNING message_id",
                    [reporter, *chunk],
                )
                self._mark_reported({message_id for (message_id,) in done}, now)

    def _mark_reported(self, message_ids: Iterable[str], now: float) -> None:
        """Final messages among these that no reporter waits for any more are reported."""
        for chunk in _chunks(sorted(message_ids)):
            self._sql(
                "UPDATE messages SET reported_ts = ? WHERE reported_ts IS NULL "
                f"AND state IN ('sent', 'error') AND id IN ({_marks(chunk)}) AND NOT EXISTS "
                "(SELECT 1 FROM report_queue q WHERE q.message_id = messages.id)",
                [now, *chunk],
            )

    # ------------------------------------------------------------------ rate limits

    @on_db_thread
    def reserve_sends(
        self, account_id: str, limits: Sequence[tuple[int, int]], wanted: int, now: float
    ) -> tuple[int, list[float]]:
        with self._write():
            if self.postgres:  # one reservation per account at a time, across processes
                self._sql("SELECT 1 FROM accounts WHERE id = ? FOR UPDATE", [account_id])
            self._prune_slots(now)
            counts = {}
            for window, _ in limits:
                rows = self._sql(
                    "SELECT COUNT(*) FROM send_slots WHERE account_id = ? AND ts > ?",
                    (account_id, now - window),
                )
                counts[window] = rows[0][0]
            granted = max(0, min(wanted, *(limit - counts[w] for w, limit in limits)))
            for chunk in _chunks([now] * granted):
                self._sql(
                    f"INSERT INTO send_slots (account_id, ts) VALUES {_value_rows(len(chunk), 2)}",
                    [v for ts in chunk for v in (account_id, ts)],
                )
            refused = wanted - granted
            retry_at = [now] * refused
            for window, limit in limits:
                if refused == 0 or counts[window] + granted < limit:
                    continue
                # The j-th refused message may go when the j-th oldest slot leaves the window.
                rows = self._sql(
                    "SELECT ts FROM send_slots WHERE account_id = ? AND ts > ? ORDER BY ts LIMIT ?",
                    (account_id, now - window, refused),
                )
                frees = [ts + window for (ts,) in rows]
                frees += [now + window] * (refused - len(frees))
                retry_at = [max(a, b) for a, b in zip(retry_at, frees, strict=True)]
        return granted, retry_at

    def _prune_slots(self, now: float) -> None:
        if now - self._last_slot_prune > SLOT_PRUNE_INTERVAL:
            self._last_slot_prune = now
            self._sql("DELETE FROM send_slots WHERE ts < ?", (now - 86400,))

    # ------------------------------------------------------------------ accounts

    @on_db_thread
    def put_account(self, account: Account, now: float) -> None:
        row = self.schema.Account
        values = _account_columns(account)
        if account.password:
            values["password"] = self.keyring.seal(account.password, account_place(account.id))
        values.update(created_at=now, updated_at=now)
        update = {k: v for k, v in values.items() if k not in ("id", "created_at")}
        with self._write():
            row.insert(**values).on_conflict(conflict_target=[row.id], update=update).execute()

    @on_db_thread
    def get_accounts(self, ids: Sequence[str]) -> dict[str, Account]:
        row = self.schema.Account
        ids = list(ids)
        found = _dicts(row.select().where(row.id.in_(ids))) if ids else []
        return {r["id"]: self._account(r) for r in found}

    @on_db_thread
    def list_accounts(self) -> list[Account]:
        row = self.schema.Account
        rows = _dicts(row.select().order_by(row.id))
        return [self._account(r) for r in rows]

    def _account(self, row: dict[str, Any]) -> Account:
        if row["password"]:
            row = {**row, "password": self.keyring.open(row["password"], account_place(row["id"]))}
        return _account(row)

    @on_db_thread
    def delete_account(self, account_id: str, *, force: bool, now: float) -> AccountDeletion:
        msg, account = self.schema.Message, self.schema.Account
        with self._write():
            if not account.select().where(account.id == account_id).exists():
                return AccountDeletion(found=False)
            unsent_rows = self._sql(
                "SELECT id, state FROM messages WHERE account_id = ? AND state IN (?, ?, ?)",
                (account_id, *UNSENT),
            )
            if unsent_rows and not force:
                return AccountDeletion(found=True, unsent=len(unsent_rows))
            # Messages being sent right now finish; their next attempt finds no account.
            waiting = [id_ for id_, state in unsent_rows if state != State.SENDING]
            for chunk in _chunks(waiting):
                msg.update(
                    state=State.ERROR,
                    error="account deleted",
                    error_ts=now,
                    updated_at=now,
                    reported_ts=self._reported_mark(now),
                ).where(msg.id.in_(chunk)).execute()
            events = [
                Event("error", id_, account_id, now, detail="account deleted") for id_ in waiting
            ]
            self._insert_events(events)
            account.delete().where(account.id == account_id).execute()
        return AccountDeletion(found=True, deleted=True, unsent=len(unsent_rows), events=events)

    # ------------------------------------------------------------------ admin

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
        rows = _dicts(query)
        next_cursor = rows[-1]["pk"] if len(rows) == limit else None
        return [_record(r) for r in rows], next_cursor

    @on_db_thread
    def get_message(self, message_id: str) -> tuple[MessageRecord, list[Event]] | None:
        msg, event = self.schema.Message, self.schema.Event
        rows = _dicts(msg.select().where(msg.id == message_id))
        if not rows:
            return None
        events = _dicts(event.select().where(event.message_id == message_id).order_by(event.pk))
        record = _record(rows[0])
        record.payload = self._payloads([rows[0]["pk"]]).get(rows[0]["pk"])
        return record, [_event(e) for e in events]

    @on_db_thread
    def accounts_of(self, message_ids: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for chunk in _chunks(message_ids):
            rows = self._sql(
                f"SELECT id, account_id FROM messages WHERE id IN ({_marks(chunk)})", chunk
            )
            found.update(rows)
        return found

    @on_db_thread
    def delete_messages(self, ids: Sequence[str]) -> DeleteResult:
        result = DeleteResult()
        now = time.time()
        with self._write():
            states: dict[str, tuple[str, float | None]] = {}
            for chunk in _chunks(ids):
                rows = self._sql(
                    f"SELECT id, state, sent_ts FROM messages WHERE id IN ({_marks(chunk)})", chunk
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
        for chunk in _chunks(sent):
            self._sql(
                f"INSERT INTO sent_ids (id, sent_ts) VALUES "
                f"{_value_rows(len(chunk), 2)} ON CONFLICT (id) DO NOTHING",
                [v for pair in chunk for v in pair],
            )

    def _delete_rows(self, ids: Sequence[str]) -> None:
        for chunk in _chunks(ids):
            self._sql(
                f"DELETE FROM message_payloads WHERE pk IN (SELECT pk FROM messages "
                f"WHERE id IN ({_marks(chunk)}))",
                chunk,
            )
            self._sql(f"DELETE FROM message_events WHERE message_id IN ({_marks(chunk)})", chunk)
            self._sql(f"DELETE FROM report_queue WHERE message_id IN ({_marks(chunk)})", chunk)
            self._sql(f"DELETE FROM messages WHERE id IN ({_marks(chunk)})", chunk)

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

    @on_db_thread
    def get_flag(self, name: str) -> str | None:
        row = self._sql("SELECT value FROM flags WHERE name = ?", (name,))
        return row[0][0] if row else None

    @on_db_thread
    def hold_lease(self, name: str, holder: str, now: float, seconds: float) -> bool:
        with self._write():
            taken = self._sql(_LEASE_SQL, (name, holder, now + seconds, now))
        return bool(taken)

    @on_db_thread
    def release_lease(self, name: str, holder: str) -> None:
        with self._write():
            self._sql("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))

    @on_db_thread
    def set_flag(self, name: str, value: str) -> None:
        flag = self.schema.Flag
        with self._write():
            flag.insert(name=name, value=value).on_conflict(
                conflict_target=[flag.name], update={flag.value: value}
            ).execute()

    # ------------------------------------------------------------------ volumes

    @on_db_thread
    def put_volume(self, volume: VolumeRecord) -> None:
        row = self.schema.Volume
        values = {
            "name": volume.name,
            "owner": volume.account_id or "",
            "backend": volume.backend,
            "config": _dumps(self._seal_config(volume.config, volume.name, volume.account_id)),
            "created_at": volume.created_at,
            "updated_at": volume.updated_at,
        }
        update = {k: v for k, v in values.items() if k not in ("name", "owner", "created_at")}
        with self._write():
            row.insert(**values).on_conflict(
                conflict_target=[row.name, row.owner], update=update
            ).execute()

    @on_db_thread
    def list_volumes(self) -> list[VolumeRecord]:
        row = self.schema.Volume
        return [
            VolumeRecord(
                name=r["name"],
                account_id=r["owner"] or None,
                backend=r["backend"],
                config=self._open_config(json.loads(r["config"]), r["name"], r["owner"] or None),
                created_at=r["created_at"],
                updated_at=r["updated_at"],
            )
            for r in _dicts(row.select().order_by(row.name, row.owner))
        ]

    def _seal_config(
        self, config: Mapping[str, Any], name: str, owner: str | None
    ) -> dict[str, Any]:
        """The config as stored: credentials sealed, the rest readable as it is."""
        return _map_secrets(config, name, owner, self.keyring.seal)

    def _open_config(self, config: dict[str, Any], name: str, owner: str | None) -> dict[str, Any]:
        return _map_secrets(config, name, owner, self.keyring.open)

    @on_db_thread
    def delete_volume(self, name: str, account_id: str | None) -> bool:
        row = self.schema.Volume
        with self._write():
            deleted: int = (
                row.delete().where((row.name == name) & (row.owner == (account_id or ""))).execute()
            )
        return deleted > 0


# ---------------------------------------------------------------------- helpers


def _dicts(query: pw.ModelSelect[Any]) -> list[dict[str, Any]]:
    """Rows as dicts (peewee's stubs type ``.dicts()`` rows as model instances)."""
    rows: list[dict[str, Any]] = list(query.dicts())
    return rows


def _chunks(items: Sequence[Any], size: int = ROWS_PER_STATEMENT) -> Iterable[list[Any]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _marks(items: Sequence[Any]) -> str:
    return ", ".join("?" * len(items))


def _typed_rows(rows: int, types: Sequence[str]) -> str:
    """``VALUES`` rows whose first row names the column types: PostgreSQL cannot infer the
    type of a parameter in a ``VALUES`` list (it would take NULLs and numbers for text)."""
    first = "(" + ", ".join(f"CAST(? AS {t})" for t in types) + ")"
    return ", ".join([first, *[_value_rows(1, len(types))] * (rows - 1)])


def _value_rows(rows: int, columns: int) -> str:
    row = "(" + ", ".join("?" * columns) + ")"
    return ", ".join([row] * rows)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


_ACCOUNT_FIELDS = (
    "id",
    "host",
    "port",
    "user",
    "password",
    "tls",
    "limit_per_minute",
    "limit_per_hour",
    "limit_per_day",
    "limit_behavior",
    "batch_size",
    "max_connections",
    "ttl",
    "transport",
)


def _map_secrets(
    config: Mapping[str, Any], name: str, owner: str | None, change: Callable[[Any, Place], Any]
) -> dict[str, Any]:
    """``config`` with ``change(value, place)`` applied to its credential fields."""
    secret = _secret_fields(config)
    return {
        field: change(value, volume_place(name, owner, field)) if field in secret else value
        for field, value in config.items()
    }


def _secret_fields(config: Mapping[str, Any]) -> list[str]:
    """The keys of a volume's config that hold a credential (and have a value)."""
    return [k for k, v in config.items() if is_secret_field(k) and isinstance(v, str) and v]


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
        id=row["id"],
        account_id=row["account_id"],
        priority=row["priority"],
        status=row["state"],
        deferred_ts=row["deferred_ts"],
        sent_ts=row["sent_ts"],
        error_ts=row["error_ts"],
        error=row["error"],
        reported_ts=row["reported_ts"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        attempts=row["attempts"],
    )


def _report(
    event_id: int,
    message_id: str,
    account_id: str | None,
    priority: int | None,
    kind: str,
    ts: float,
    code: int | None,
    detail: str,
    data: str,
) -> DeliveryReport:
    extra = json.loads(data)
    refused = extra.get("refused") or {}
    return DeliveryReport(
        event_id=event_id,
        id=message_id,
        account_id=account_id,
        priority=priority,
        status=kind,
        ts=ts,
        error=None if kind == "sent" else detail,
        error_code=None if kind == "sent" else code,
        deferred_ts=extra.get("retry_at"),
        refused=[{"recipient": to, "error": why} for to, why in refused.items()],
    )


def _event(row: dict[str, Any]) -> Event:
    return Event(
        kind=row["kind"],
        message_id=row["message_id"],
        account_id=row["account_id"],
        ts=row["ts"],
        code=row["code"],
        detail=row["detail"],
        data=json.loads(row["data"]),
    )
