"""Bundled store plugin: messages, accounts and rate-limit windows in SQL through peewee.

``[sql] url`` (or the legacy ``GMP_DB_PATH``) is a file path or ``sqlite:///path``; the
default is ``gmp.db`` in the working directory.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import peewee as pw

from gmp_core import Config, ConfigError, Settings, hookimpl, setting
from gmp_sql.store import SqlStore

__all__ = ["SqlSettings", "SqlStore"]


class SqlSettings(Settings):
    url: str = setting(
        "gmp.db", env="GMP_DB_PATH", description="database: a SQLite file path, or sqlite:///path"
    )
    busy_timeout_ms: int = setting(10_000, description="SQLite: wait this long for the lock")
    synchronous: Literal["normal", "full"] = setting(
        "normal",
        description="SQLite: 'normal' survives a process crash (WAL); 'full' also "
        "a power loss, at a cost per commit",
    )


@hookimpl
def gmp_register_settings(register: Callable[[str, type[Settings]], None]) -> None:
    register("sql", SqlSettings)


@hookimpl
def gmp_make_store(config: Config) -> SqlStore | None:
    settings: SqlSettings = config.section("sql")
    url = settings.url
    if url.startswith(("postgres://", "postgresql://")):
        raise ConfigError("[sql] url: PostgreSQL is not supported yet")
    path = url.removeprefix("sqlite:///")  # sqlite:///rel.db, sqlite:////abs/path.db
    if path != ":memory:":
        file = Path(path).expanduser()
        file.parent.mkdir(parents=True, exist_ok=True)
        path = str(file)
    return SqlStore(
        pw.SqliteDatabase(
            path,
            check_same_thread=False,  # opened on the database thread, used only there
            pragmas={
                "journal_mode": "wal",
                "synchronous": settings.synchronous,
                "busy_timeout": settings.busy_timeout_ms,
            },
        )
    )
