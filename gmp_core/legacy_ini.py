"""The original service's ``config.ini``, turned into our tables.

The original genro-mail-proxy read one INI file (``GMP_CONFIG``, default ``./config.ini``)
with Python's ``configparser``; here it is read the same way and each key it knew becomes the
setting its environment variable sets here too: ``[server] port`` and ``GMP_PORT`` are both
``[rest] port``. ``gmp migrate-config`` prints the result as a ``plugins.toml``.

Values are read as the original read them: ``int()``, ``float()``, and booleans
``1/true/yes/on`` or ``0/false/no/off`` (another word leaves the default, as there, and is
logged here). A key it cannot map is logged as ignored, naming it, and never stops start-up:
the original ignored unknown keys too.
"""

from __future__ import annotations

import configparser
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LEGACY_CONFIG_FILE = "config.ini"

_BOOLEANS = {"1": True, "true": True, "yes": True, "on": True}
_BOOLEANS |= {"0": False, "false": False, "no": False, "off": False}


def boolean(text: str) -> bool | None:
    """The original's booleans; None for any other word."""
    return _BOOLEANS.get(text.strip().lower())


@dataclass(frozen=True, slots=True)
class Target:
    """Where one key of the original goes: ``[table] key``, read with ``kind``. ``env`` is
    the original's environment variable for it (the same setting's legacy name here)."""

    table: str
    key: str
    env: str
    kind: Callable[[str], Any] = str


KEYS: dict[tuple[str, str], Target] = {
    ("storage", "db_path"): Target("sql", "url", "GMP_DB_PATH"),
    ("server", "host"): Target("rest", "host", "GMP_HOST"),
    ("server", "port"): Target("rest", "port", "GMP_PORT", int),
    ("server", "api_token"): Target("token_auth", "api_token", "GMP_API_TOKEN"),
    ("client", "client_sync_url"): Target("proxy_sync", "url", "GMP_CLIENT_SYNC_URL"),
    ("client", "client_sync_user"): Target("proxy_sync", "user", "GMP_CLIENT_SYNC_USER"),
    ("client", "client_sync_password"): Target(
        "proxy_sync", "password", "GMP_CLIENT_SYNC_PASSWORD"
    ),
    ("client", "client_sync_token"): Target("proxy_sync", "token", "GMP_CLIENT_SYNC_TOKEN"),
    ("delivery", "send_interval_seconds"): Target(
        "service", "send_loop_interval", "GMP_SEND_LOOP_INTERVAL", float
    ),
    ("delivery", "test_mode"): Target("service", "test_mode", "GMP_TEST_MODE", boolean),
    ("delivery", "default_priority"): Target(
        "service", "default_priority", "GMP_DEFAULT_PRIORITY", int
    ),
    ("delivery", "delivery_report_retention_seconds"): Target(
        "service",
        "delivery_report_retention_seconds",
        "GMP_DELIVERY_REPORT_RETENTION_SECONDS",
        int,
    ),
    ("delivery", "batch_size_per_account"): Target(
        "service", "batch_size_per_account", "GMP_BATCH_SIZE_PER_ACCOUNT", int
    ),
    ("logging", "delivery_activity"): Target(
        "logging", "delivery_activity", "GMP_LOG_DELIVERY_ACTIVITY", boolean
    ),
}

SCHEDULER_ACTIVE_HAS_NO_EFFECT = (
    "the original's switch of its report loop; this proxy always reports: leave "
    "[proxy_sync] url empty to post no reports, POST /commands/suspend to stop sending"
)

# Settings of the original that this proxy accepts and does not need: why, logged once.
NO_EFFECT_KEYS = {("scheduler", "active"): SCHEDULER_ACTIVE_HAS_NO_EFFECT}
NO_EFFECT_ENVIRONMENT = {"GMP_SCHEDULER_ACTIVE": SCHEDULER_ACTIVE_HAS_NO_EFFECT}

VOLUME_FIELDS = ("backend", "config", "account_id")


class IniError(ValueError):
    """The file cannot be used as the original could not use it; names the key, never a
    value (``Config`` turns it into a ``ConfigError``)."""


@dataclass
class Translation:
    """A config.ini as our tables, where each value came from, and what to log about it."""

    where: str
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    sources: dict[tuple[str, str], str] = field(default_factory=dict)  # (table, key) -> label
    notices: list[tuple[int, str]] = field(default_factory=list)  # (logging level, text)
    ignored: list[str] = field(default_factory=list)  # "[scheduler] timezone", ...

    def set(self, table: str, key: str, value: Any, label: str) -> None:
        self.tables.setdefault(table, {})[key] = value
        self.sources[(table, key)] = f"{self.where} {label}"

    def ignore(self, label: str, why: str = "not a setting of this proxy") -> None:
        self.ignored.append(label)
        self.notices.append((logging.WARNING, f"{self.where}: {label} is ignored: {why}"))


def read(path: Path) -> Translation:
    """Translate the INI file at ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise IniError(f"{path}: cannot be read ({exc.strerror})") from None
    return translate(text, str(path))


def translate(text: str, where: str = LEGACY_CONFIG_FILE) -> Translation:
    """Translate INI ``text``; ``where`` names the file in messages."""
    parser = configparser.ConfigParser()  # what the original used: same parsing, same %
    try:
        parser.read_string(text, source=where)
    except configparser.Error as exc:
        raise IniError(f"{where}: not a valid INI file ({_describe(exc)})") from None
    translation = Translation(where)
    for section in parser.sections():
        for key in parser.options(section):
            if section == "volumes":
                continue  # read together below
            _translate_key(translation, section, key, _value(parser, section, key, where))
    if parser.has_section("volumes"):
        _translate_volumes(translation, parser, where)
    return translation


def _translate_key(translation: Translation, section: str, key: str, text: str) -> None:
    label = f"[{section}] {key}"
    if (section, key) in NO_EFFECT_KEYS:
        translation.ignore(label, f"it has no effect here ({NO_EFFECT_KEYS[(section, key)]})")
        return
    target = KEYS.get((section, key))
    if target is None:
        translation.ignore(label)
        return
    try:
        value = target.kind(text)
    except ValueError:
        kind = "an integer" if target.kind is int else "a number"
        raise IniError(f"{translation.where} {label}: must be {kind}") from None
    if value is None:  # a boolean the original did not understand: it kept the default
        translation.ignore(label, "not a boolean (1, true, yes, on, 0, false, no, off)")
        return
    translation.set(target.table, target.key, value, label)


def _translate_volumes(
    translation: Translation, parser: configparser.ConfigParser, where: str
) -> None:
    """``volume.NAME.backend``, ``volume.NAME.config`` (JSON) and ``volume.NAME.account_id``
    become ``[[volumes.mounts]]``."""
    found: dict[str, dict[str, str]] = {}
    for key in parser.options("volumes"):
        prefix, _, rest = key.partition(".")
        name, _, part = rest.rpartition(".")
        if prefix != "volume" or not name or part not in VOLUME_FIELDS:
            translation.ignore(
                f"[volumes] {key}", "not volume.NAME.backend, .config or .account_id"
            )
            continue
        found.setdefault(name, {})[part] = _value(parser, "volumes", key, where)
    mounts = []
    for name, fields in found.items():
        label = f"[volumes] volume.{name}"
        if name == "base64" or fields.get("backend", "").strip() == "base64":
            translation.ignore(f"{label}.*", "base64: attachments are built in here")
            continue
        for required in ("backend", "config"):
            if required not in fields:
                raise IniError(f"{where} {label}.{required}: missing (the volume needs it)")
        mount: dict[str, Any] = {
            "name": name,
            "backend": fields["backend"].strip(),
            "config": _json_object(fields["config"], f"{where} {label}.config"),
        }
        if fields.get("account_id", "").strip():  # empty: every account's, as there
            mount["account_id"] = fields["account_id"].strip()
        mounts.append(mount)
    if mounts:
        order = ", ".join(f"[{n}] volume.{m['name']}" for n, m in enumerate(mounts))
        translation.set("volumes", "mounts", mounts, f"[volumes] (mounts {order})")
        for n, mount in enumerate(mounts):  # errors about one volume name it
            translation.sources[("volumes", f"mounts[{n}]")] = (
                f"{where} [volumes] volume.{mount['name']}"
            )


def _json_object(text: str, label: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:  # its message names a position, never the text
        raise IniError(f"{label}: not valid JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(value, dict):
        raise IniError(f"{label}: must be a JSON object")
    return value


def _value(parser: configparser.ConfigParser, section: str, key: str, where: str) -> str:
    try:
        return parser.get(section, key)
    except configparser.InterpolationError:
        raise IniError(
            f"{where} [{section}] {key}: a '%' must be written '%%' (configparser's rule, "
            "the original's too)"
        ) from None


def _describe(exc: configparser.Error) -> str:
    """What is wrong and on which line, without quoting the line (it may hold a secret)."""
    line = getattr(exc, "lineno", None)
    errors = getattr(exc, "errors", None)  # ParsingError's (line number, line) pairs
    if errors:
        line = errors[0][0]
    kind = type(exc).__name__
    return f"{kind} on line {line}" if line else kind


def to_toml(translation: Translation) -> str:
    """The translation as a ``plugins.toml``: what was not translated, as comments on top."""
    import tomli_w  # only this command writes TOML

    lines = [
        f"# plugins.toml translated from {translation.where}, the original service's",
        "# configuration, by `gmp migrate-config`. Unlike config.ini, here the environment wins",
        "# over the file (GMP_<TABLE>_<KEY>, and the original's GMP_* names). Secrets were copied",
        "# as they were: better kept in the environment. Every setting: docs/configuration.md.",
    ]
    if translation.ignored:
        lines += ["#", "# Not translated:"]
        lines += [f"#   {text}" for level, text in translation.notices if level >= logging.WARNING]
    return "\n".join(lines) + "\n\n" + tomli_w.dumps(translation.tables)
