"""Configuration: ``plugins.toml`` plus ``GMP_*`` environment overrides, validated and typed.

Each plugin declares its table as a pydantic model (hook ``gmp_register_settings``); the core's
own table is ``[service]``. For a key ``k`` of table ``t`` the value comes from, in order:

1. the environment variable ``GMP_<T>_<K>`` (12-factor: the environment wins);
2. the legacy flat name the field declares with :func:`setting` (``GMP_API_TOKEN`` ...);
3. the file; 4. the model's default.

The original service's ``config.ini`` is read too (``legacy_ini.py`` turns it into tables);
for it the original's order holds: a key the file sets wins over the environment.

A bad value stops start-up with a :class:`ConfigError` naming the key and where it came from.
A ``GMP_*`` variable that nothing reads is a warning at start-up (a typo, most often).
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import tomllib
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo

from gmp_core import legacy_ini
from gmp_core.intake import ascii_domain

DEFAULT_CONFIG_FILE = "plugins.toml"

# Environment variables the core reads outside any settings table: each name, and who reads
# it. The typo guard knows them; a new one is one line here.
CORE_ENVIRONMENT = {
    "GMP_CONFIG": "the configuration file (gmp --config)",
}

Notice = tuple[int, str]  # (logging level, text): said at start-up and by check-config


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
    """Base for settings tables: unknown keys are errors (they are usually typos).

    A plugin that reads environment variables of its own, outside its settings, lists them in
    ``extra_environment`` so that the typo guard knows them."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    extra_environment: ClassVar[tuple[str, ...]] = ()


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
        description="how long reported final messages are kept (seconds); <= 0: no automatic "
        "purge, cleanup-messages removes them",
    )
    message_id_domain: str | None = setting(
        None,
        description="domain of generated Message-IDs (default: the sender's; an "
        "internationalised one goes as its A-label)",
    )
    max_defer_seconds: float = setting(
        365 * 86400,
        gt=0,
        description="how far ahead deferred_ts may be (further: rejected)",
    )
    max_message_attachment_bytes: int = setting(
        40 * 1024 * 1024, description="most attachment bytes in one message", ge=1
    )
    test_mode: bool = setting(
        False,
        env="GMP_TEST_MODE",
        description="send only when POST /commands/run-now asks (the original's test mode)",
    )

    @field_validator("default_priority")
    @classmethod
    def _priority_range(cls, value: int) -> int:
        if not 0 <= value <= 3:
            raise ValueError("must be between 0 and 3")
        return value

    @field_validator("message_id_domain")
    @classmethod
    def _ascii_domain(cls, value: str | None) -> str | None:
        if value is None:
            return None
        converted = ascii_domain(value.strip())
        if converted is None:
            raise ValueError("must be a domain name (example.com) or a literal ([192.0.2.1])")
        return converted

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
    """The parsed file plus the environment; validates each table once it is registered.

    ``file_wins`` (a config.ini): a key the file sets is not overridden by the environment.
    ``sources`` names where the file set each ``(table, key)``, for error messages; ``notices``
    are said at start-up (see :meth:`startup_notices`)."""

    def __init__(
        self,
        tables: Mapping[str, Any] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        path: Path | None = None,
        file_wins: bool = False,
        sources: Mapping[tuple[str, str], str] | None = None,
        notices: Iterable[Notice] = (),
    ) -> None:
        self.path = path
        self.file_wins = file_wins
        self._tables = dict(tables or {})
        self._environ = dict(os.environ if environ is None else environ)
        self._file_sources = dict(sources or {})
        self._notices = list(notices)
        # Variables that set a value: name -> "[table] key" (never the value).
        self.environment_used: dict[str, str] = {}
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
        """Read ``path``, else ``$GMP_CONFIG``, else ``./plugins.toml``, else the original's
        ``./config.ini``, whichever exists first. A file ending in ``.ini`` is read as the
        original's config.ini."""
        env = os.environ if environ is None else environ
        explicit = path or env.get("GMP_CONFIG")
        file = Path(explicit) if explicit else Path(DEFAULT_CONFIG_FILE)
        if not file.exists():
            if explicit:
                raise ConfigError(f"configuration file not found: {file}")
            file = Path(legacy_ini.LEGACY_CONFIG_FILE)
            if not file.exists():
                return cls({}, environ=env)
        if file.suffix.lower() == ".ini":
            return cls.from_ini(file, env)
        try:
            tables = tomllib.loads(file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: not valid TOML: {exc}") from None
        return cls(tables, environ=env, path=file)

    @classmethod
    def from_ini(cls, file: Path, environ: Mapping[str, str] | None = None) -> Config:
        """The original service's config.ini, with its precedence: the file over the
        environment."""
        try:
            ini = legacy_ini.read(file)
        except legacy_ini.IniError as exc:
            raise ConfigError(str(exc)) from None
        read = (
            logging.INFO,
            f"read {file}, the original service's configuration: its keys win over the "
            f"environment, as there ('gmp migrate-config {file}' prints the plugins.toml "
            "equivalent)",
        )
        return cls(
            ini.tables,
            environ=environ,
            path=file,
            file_wins=True,
            sources=ini.sources,
            notices=[read, *ini.notices],
        )

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

    # ------------------------------------------------------------------ the environment

    def known_environment(self) -> set[str]:
        """Every ``GMP_*`` name something reads: the settings of the tables declared so far
        (``GMP_<TABLE>_<KEY>`` and legacy names), what their models list in
        ``extra_environment``, ``${NAME}`` references in the file, the core's own names and
        the original's names that have no effect here."""
        names = set(CORE_ENVIRONMENT) | set(legacy_ini.NO_EFFECT_ENVIRONMENT)
        names.update(_references(self._tables))  # ${NAME} in the file: a volume's secret
        for table, model in self._models.items():
            for name, info in model.model_fields.items():
                names.update(_environment_names(table, name, info))
            names.update(getattr(model, "extra_environment", ()))
        return names

    def unread_environment(self) -> list[str]:
        """``GMP_*`` variables set that nothing reads (ask once every plugin registered)."""
        known = self.known_environment()
        return sorted(
            name for name in self._environ if name.startswith("GMP_") and name not in known
        )

    def startup_notices(self) -> list[Notice]:
        """What to say at start-up about the configuration: which file was read and what in it
        was ignored, original names with no effect here, and variables nothing reads."""
        notices = list(self._notices)
        for name, why in legacy_ini.NO_EFFECT_ENVIRONMENT.items():
            if name in self._environ:
                notices.append((logging.WARNING, f"{name} has no effect here ({why})"))
        known = sorted(self.known_environment())
        for name in self.unread_environment():
            hint = difflib.get_close_matches(name, known, n=1)
            maybe = f" (did you mean {hint[0]}?)" if hint else ""
            notices.append(
                (
                    logging.WARNING,
                    f"environment variable {name} is set but nothing reads it: a typo?{maybe} "
                    "The names are in docs/configuration.md",
                )
            )
        return notices

    def _validate(self, table: str, model: type[BaseModel]) -> BaseModel:
        raw = self._tables.get(table, {})
        if not isinstance(raw, dict):
            raise ConfigError(f"[{table}] must be a table")
        values = dict(raw)
        sources = {key: self._file_sources.get((table, key), f"[{table}] {key}") for key in raw}
        for name, info in model.model_fields.items():
            for var in _environment_names(table, name, info):
                if var not in self._environ:
                    continue
                if self.file_wins and name in raw:
                    self._notices.append(
                        (
                            logging.WARNING,
                            f"{var} is ignored: {sources[name]} sets the same setting, and "
                            "a config.ini wins over the environment (the original's rule)",
                        )
                    )
                else:
                    values[name] = _parse_env(self._environ[var], info.annotation)
                    sources[name] = f"environment variable {var}"
                    self.environment_used[var] = f"[{table}] {name}"
                break
        try:
            return model.model_validate(values)
        except ValidationError as exc:
            problems = []
            for error in exc.errors(include_input=False, include_url=False):
                where = self._where(table, error["loc"], sources)
                if error["type"] == "extra_forbidden":
                    problems.append(f"{where}: unknown key")
                else:
                    problems.append(f"{where}: {error['msg']}")
            raise ConfigError("; ".join(problems)) from None

    def _where(self, table: str, loc: tuple[int | str, ...], sources: Mapping[str, str]) -> str:
        """Where a validation error is: the key's source (the file, or the variable), then the
        place inside it; a list item the file named itself (a config.ini volume) by its name."""
        key = str(loc[0]) if loc else ""
        if len(loc) > 1 and isinstance(loc[1], int):
            item = self._file_sources.get((table, f"{key}[{loc[1]}]"))
            if item is not None and not sources.get(key, "").startswith("environment"):
                return item + _inner(loc[2:])
        return sources.get(key, f"[{table}] {key}") + _inner(loc[1:])


_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _references(value: Any) -> set[str]:
    """The variables named as ``${NAME}`` in the file's strings, at any depth."""
    if isinstance(value, str):
        return set(_REFERENCE.findall(value))
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return set().union(*map(_references, value)) if value else set()
    return set()


def _environment_names(table: str, name: str, info: FieldInfo) -> list[str]:
    """The variables that set a field, the first found winning: ``GMP_<TABLE>_<KEY>``, then
    its legacy flat name if it has one."""
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    legacy = extra.get("legacy_env")
    qualified = f"GMP_{table}_{name}".upper()
    return [qualified, legacy] if isinstance(legacy, str) else [qualified]


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
