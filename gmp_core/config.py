"""Configuration: ``plugins.toml`` plus ``GMP_*`` environment overrides, validated and typed.

Each plugin declares its table as a pydantic model (hook ``gmp_register_settings``); the core's
own table is ``[service]``. For a key ``k`` of table ``t`` the value comes from, in order:

1. the environment variable ``GMP_<T>_<K>`` (12-factor: the environment wins);
2. the legacy flat name the field declares with :func:`setting` (``GMP_API_TOKEN`` ...);
3. the file; 4. the model's default.

A bad value stops start-up with a :class:`ConfigError` naming the key and where it came from.
"""

from __future__ import annotations

import json
import os
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

DEFAULT_CONFIG_FILE = "plugins.toml"


class ConfigError(Exception):
    """The configuration cannot be used; the message says which key and why."""


def setting(
    default: Any, *, env: str | None = None, description: str = "", **constraints: Any
) -> Any:
    """A settings field; ``env`` names a legacy flat environment variable that also sets it.
    ``constraints`` go to pydantic's ``Field`` (``ge=1``, ``max_length=...``)."""
    extra: dict[str, Any] | None = {"legacy_env": env} if env else None
    return Field(default, description=description, json_schema_extra=extra, **constraints)


class Settings(BaseModel):
    """Base for settings tables: unknown keys are errors (they are usually typos)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PluginsSettings(Settings):
    """``[plugins]``: which installed plugins are switched off."""

    disable: list[str] = setting([], description="plugin names not to load")


class ServiceSettings(Settings):
    """``[service]``: the core's own settings."""

    default_priority: int = setting(
        2, env="GMP_DEFAULT_PRIORITY", description="priority of messages that give none (0-3)"
    )
    default_account: str | None = setting(None, description="account of messages without one")
    send_loop_interval: float = setting(
        0.5,
        env="GMP_SEND_LOOP_INTERVAL",
        description="longest idle wait before looking for due work again (seconds)",
    )
    batch_size_per_account: int = setting(
        50,
        env="GMP_BATCH_SIZE_PER_ACCOUNT",
        description="most messages of one account claimed at once (account batch_size wins)",
    )
    max_concurrent_sends: int = setting(32, description="sends in flight at once, all accounts")
    lease_seconds: float = setting(60.0, description="how long a claim lasts unless renewed")
    retry_delays: list[float] = setting(
        [60, 300, 900, 3600, 7200], description="back-off after each temporary failure"
    )
    max_retries: int | None = setting(
        None, description="retries before giving up (default: one per retry_delays entry)"
    )
    shutdown_timeout: float = setting(30.0, description="how long SIGTERM waits for sends")
    max_messages_per_call: int = setting(1000, description="messages per add-messages call")
    idempotency_window_seconds: int = setting(
        30 * 86400, description="how long a sent id stays 'already sent'"
    )
    delivery_report_retention_seconds: int = setting(
        7 * 86400,
        env="GMP_DELIVERY_REPORT_RETENTION_SECONDS",
        description="how long reported final messages are kept",
    )
    message_id_domain: str | None = setting(
        None, description="domain of generated Message-IDs (default: the sender's)"
    )
    max_message_attachment_bytes: int = setting(
        40 * 1024 * 1024, description="most attachment bytes in one message", ge=1
    )

    @field_validator("default_priority")
    @classmethod
    def _priority_range(cls, value: int) -> int:
        if not 0 <= value <= 3:
            raise ValueError("must be between 0 and 3")
        return value

    @field_validator("batch_size_per_account", "max_concurrent_sends", "max_messages_per_call")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be at least 1")
        return value

    @property
    def retries_allowed(self) -> int:
        return len(self.retry_delays) if self.max_retries is None else self.max_retries


class ReportingSettings(Settings):
    """``[reporting]``: the delivery-report loops (one per enabled reporter)."""

    batch_size: int = setting(500, ge=1, description="most reports in one post")
    interval: float = setting(
        1.0, ge=0, description="shortest wait between posts, unless more reports wait (seconds)"
    )
    poll_interval: float = setting(
        5.0, gt=0, description="longest idle wait before looking for reports again (seconds)"
    )
    heartbeat_seconds: float = setting(
        300.0, ge=0, description="when idle, an empty report this often; 0: never"
    )
    retry_initial: float = setting(
        5.0, gt=0, description="first back-off after a failed post (seconds)"
    )
    retry_max: float = setting(300.0, gt=0, description="longest back-off (seconds)")
    purge_interval: float = setting(
        300.0, gt=0, description="how often retention purges reported messages (seconds)"
    )
    post_timeout: float = setting(
        60.0,
        gt=0,
        description="longest one post may take, whatever the reporter (then it counts as "
        "failed and is retried); the lease is renewed meanwhile (seconds)",
    )
    flush_timeout: float = setting(
        10.0, ge=0, description="how long shutdown waits for a last post (seconds)"
    )
    lease_seconds: float = setting(
        60.0,
        gt=0,
        description="processes sharing a database: how long one posts the reports of all "
        "unless renewed, the longest a dead one holds them up (seconds)",
    )


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class LoggingSettings(Settings):
    """``[logging]``: how ``gmp serve`` logs (standard ``logging``, to stderr)."""

    level: str = setting("INFO", env="GMP_LOG_LEVEL", description="DEBUG, INFO, WARNING or ERROR")
    format: Literal["text", "json"] = setting(
        "text", env="GMP_LOG_FORMAT", description="'text' lines, or 'json': one object per line"
    )
    delivery_activity: bool = setting(
        False,
        env="GMP_LOG_DELIVERY_ACTIVITY",
        description="log every delivery attempt and report exchange (INFO, logger gmp.activity)",
    )

    @field_validator("level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.upper() not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return value.upper()


class Config:
    """The parsed file plus the environment; validates each table once it is registered."""

    def __init__(
        self,
        tables: Mapping[str, Any] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        path: Path | None = None,
    ) -> None:
        self.path = path
        self._tables = dict(tables or {})
        self._environ = dict(os.environ if environ is None else environ)
        self._models: dict[str, type[BaseModel]] = {}
        self._sections: dict[str, BaseModel] = {}
        self.plugins = typing.cast(PluginsSettings, self.register("plugins", PluginsSettings))
        self.service = typing.cast(ServiceSettings, self.register("service", ServiceSettings))
        self.reporting = typing.cast(
            ReportingSettings, self.register("reporting", ReportingSettings)
        )
        self.logging = typing.cast(LoggingSettings, self.register("logging", LoggingSettings))

    @classmethod
    def load(
        cls, path: str | Path | None = None, environ: Mapping[str, str] | None = None
    ) -> Config:
        """Read ``path``, else ``$GMP_CONFIG``, else ``./plugins.toml`` if it exists."""
        env = os.environ if environ is None else environ
        explicit = path or env.get("GMP_CONFIG")
        file = Path(explicit) if explicit else Path(DEFAULT_CONFIG_FILE)
        if not file.exists():
            if explicit:
                raise ConfigError(f"configuration file not found: {file}")
            return cls({}, environ=env)
        try:
            tables = tomllib.loads(file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: not valid TOML: {exc}") from None
        return cls(tables, environ=env, path=file)

    @property
    def disabled_plugins(self) -> set[str]:
        return set(self.plugins.disable)

    def register(self, table: str, model: type[BaseModel]) -> BaseModel:
        """Validate ``[table]`` against ``model`` now; later calls return the same object."""
        if table in self._sections:
            if self._models[table] is not model:
                raise ConfigError(f"settings table [{table}] is declared twice")
            return self._sections[table]
        section = self._validate(table, model)
        self._models[table] = model
        self._sections[table] = section
        return section

    def section(self, table: str) -> Any:
        """The validated settings of ``[table]`` (declared through ``gmp_register_settings``)."""
        try:
            return self._sections[table]
        except KeyError:
            raise ConfigError(f"no settings table [{table}] was declared") from None

    def declared_tables(self) -> dict[str, type[BaseModel]]:
        """Every declared table and its settings model (for docs and ``check-config``)."""
        return dict(self._models)

    def unknown_tables(self) -> list[str]:
        """Tables in the file that no enabled plugin declared (typos, or disabled plugins)."""
        return sorted(set(self._tables) - set(self._sections))

    def _validate(self, table: str, model: type[BaseModel]) -> BaseModel:
        raw = self._tables.get(table, {})
        if not isinstance(raw, dict):
            raise ConfigError(f"[{table}] must be a table")
        values, sources = dict(raw), {key: f"[{table}] {key}" for key in raw}
        for name, info in model.model_fields.items():
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            for var in (f"GMP_{table}_{name}".upper(), extra.get("legacy_env")):
                if isinstance(var, str) and var in self._environ:
                    values[name] = _parse_env(self._environ[var], info.annotation)
                    sources[name] = f"environment variable {var}"
                    break
        try:
            return model.model_validate(values)
        except ValidationError as exc:
            problems = []
            for error in exc.errors(include_input=False, include_url=False):
                key = str(error["loc"][0]) if error["loc"] else ""
                where = sources.get(key, f"[{table}] {key}") + _inner(error["loc"][1:])
                if error["type"] == "extra_forbidden":
                    problems.append(f"{where}: unknown key")
                else:
                    problems.append(f"{where}: {error['msg']}")
            raise ConfigError("; ".join(problems)) from None


def _inner(loc: tuple[int | str, ...]) -> str:
    """Where in a key's list or table: ``[0].token``."""
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)


def _parse_env(value: str, annotation: Any) -> Any:
    """Environment values are strings: lists and tables are JSON or comma-separated."""
    origins = {typing.get_origin(annotation), *map(typing.get_origin, typing.get_args(annotation))}
    if origins & {list, tuple, set, dict}:
        try:
            return json.loads(value)
        except ValueError:
            return [item.strip() for item in value.split(",") if item.strip()]
    return value
