"""Bundled store plugin: the core's queue (``gmp_core.Store``) and the capabilities the bundled
plugins need (rate-limit windows, volumes, captured mail) in SQL through peewee, one file per
job (``store.py`` lists them).

``[sql] url`` (or the legacy ``GMP_DB_PATH``) is a file path or ``sqlite:///path`` (default
``gmp.db`` in the working directory), or ``postgresql://user:password@host:port/database``
for several processes sharing one queue (``pip install "genro-mail-proxy[postgresql]"``).

``[secrets]`` holds the keys that encrypt SMTP passwords and volume credentials in the store
(``secrets.py``); ``gmp secrets`` rotates them (``commands.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal, cast

import click
import peewee as pw

from gmp_core import Config, ConfigError, Service, Settings, hookimpl, setting
from gmp_sql.commands import secrets as secrets_command
from gmp_sql.runner import GreenletRunner
from gmp_sql.secrets import Keyring, SecretError, SecretsSettings
from gmp_sql.store import SqlStore

__all__ = ["SecretError", "SecretsSettings", "SqlSettings", "SqlStore"]


class SqlSettings(Settings):
    url: str = setting(
        "gmp.db",
        env="GMP_DB_PATH",
        description="database: a SQLite file path, sqlite:///path, or postgresql://...",
    )
    pool_size: int = setting(10, ge=1, description="PostgreSQL: most connections per process")
    connect_timeout: float = setting(
        10.0, gt=0, description="PostgreSQL: seconds to connect or to wait for a free connection"
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
    register("secrets", SecretsSettings)


@hookimpl
def gmp_register_commands(cli: click.Group) -> None:
    cli.add_command(secrets_command)


@hookimpl
def gmp_check_config(service: Service) -> None:
    """The keys, as the store will read them (a key file others may read is refused)."""
    Keyring.from_settings(service.config.section("secrets"))


@hookimpl
def gmp_make_store(config: Config) -> SqlStore | None:
    settings: SqlSettings = config.section("sql")
    # register() returns the table if the hook above already declared it, and declares it
    # when the store is made on its own (tests, the `gmp secrets` command).
    secrets = cast(SecretsSettings, config.register("secrets", SecretsSettings))
    keyring = Keyring.from_settings(secrets)
    url = settings.url
    if url.startswith(("postgres://", "postgresql://")):
        return _postgresql_store(settings, keyring)
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
        ),
        keyring=keyring,
    )


def _postgresql_store(settings: SqlSettings, keyring: Keyring) -> SqlStore:
    try:
        from playhouse.pwasyncio import AsyncPostgresqlDatabase
    except ImportError:
        raise ConfigError(
            '[sql] url: PostgreSQL needs the extra: pip install "genro-mail-proxy[postgresql]"'
        ) from None
    url = "postgresql://" + settings.url.split("://", 1)[1]  # asyncpg knows only this scheme
    db = AsyncPostgresqlDatabase(
        url,
        pool_size=settings.pool_size,
        pool_min_size=1,
        acquire_timeout=settings.connect_timeout,
    )
    return SqlStore(db, GreenletRunner(db), listen_url=url, keyring=keyring)
