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

:class:`SqlStore` is composed of one part per job; this file holds what joins them: opening
(schema and migrations), watching for other processes' work, readiness and closing.

* ``queue.py``: enqueue, claim, renew leases, record outcomes, next due (``Store``);
* ``reports.py``: events, the report queue, reporters, acknowledgements (``Store``);
* ``accounts.py``: put, get, list and delete accounts (``Store``);
* ``admin.py``: list, get and delete messages, retention, counts and depth (``Store``);
* ``leases.py``: leases and flags (``Store``);
* ``rate_windows.py``: rate-limit windows (``RateWindowStore``, for gmp_ratelimit);
* ``volumes.py``: volumes defined over the API (``VolumeStore``, for gmp_volumes);
* ``captures.py``: mail the sandbox captured (``CaptureStore``, for gmp_sandbox);
* ``rotation.py``: stored secrets checked at open, and ``gmp secrets rotate`` (the keys and
  the sealing are ``secrets.py``);
* ``mapping.py``: rows to the core's objects and back (no SQL);
* ``base.py``: the state and plumbing every part shares.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import peewee as pw

from gmp_core import CaptureStore, RateWindowStore, Store, VolumeStore
from gmp_sql.accounts import AccountMethods
from gmp_sql.admin import AdminMethods
from gmp_sql.captures import CaptureMethods
from gmp_sql.leases import LeaseAndFlagMethods
from gmp_sql.listen import Listener
from gmp_sql.queue import NEW_WORK_CHANNEL, QueueMethods
from gmp_sql.rate_windows import RateWindowMethods
from gmp_sql.reports import NEW_REPORTS_CHANNEL, ReportMethods
from gmp_sql.rotation import SecretMethods
from gmp_sql.runner import DatabaseThread, Runner, on_db_thread
from gmp_sql.schema import MIGRATIONS, SCHEMA_VERSION, bind_schema
from gmp_sql.secrets import Keyring
from gmp_sql.volumes import VolumeMethods

SCHEMA_LOCK_ID = 0x676D7001  # PostgreSQL advisory lock taken while creating the schema


class SqlStore(
    QueueMethods,
    ReportMethods,
    AccountMethods,
    AdminMethods,
    LeaseAndFlagMethods,
    RateWindowMethods,
    VolumeMethods,
    CaptureMethods,
    SecretMethods,
    # Named so that mypy checks every part against the protocol it implements.
    Store,
    RateWindowStore,
    VolumeStore,
    CaptureStore,
):
    """A :class:`gmp_core.Store` on a peewee database (SQLite or PostgreSQL), with every
    capability the bundled plugins need: :class:`gmp_core.RateWindowStore`,
    :class:`gmp_core.VolumeStore` and :class:`gmp_core.CaptureStore`."""

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
        self.runner = runner or DatabaseThread(db)
        self.schema = bind_schema(db)
        self.postgres = isinstance(db, pw.PostgresqlDatabase)
        self._reporters = {}  # name -> also wants deferrals (set_reporters)
        self.write_failure = None  # set by on_db_thread, cleared by ping

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
